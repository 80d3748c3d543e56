"""Benchmark results: derived ratios, ``latest.json``, ``latest.md``, ``latest.png``,
``docs/performance.md``; py-spy summaries.

``make bench`` writes ``docs/performance.md`` from the run's results (a run with
``--out`` elsewhere writes ``performance.md`` beside its other results instead).
``python -m bench.report`` renders it again from ``bench/results/latest.json`` without
running anything (after a change of the page's text here); ``--check`` only says
whether the committed page is current.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"

NAMES = {
    "a": "raw aiokafka + orjson (ceiling)",
    "b": "Quix Streams session_window",
    "c": "bare faust agent",
    "e": "Kafka Streams SessionWindows",
    "d": "sessionizer worker",
}
GOAL_EVENTS_PER_S = 50_000
GOAL_VS_QUIX = 6.0
GOAL_VS_RAW = 0.25


def derive(results: dict[str, Any]) -> None:
    """Add the ratios of (d) to the others and the goal checks."""
    contenders = results.get("contenders", {})
    d = contenders.get("d", {}).get("events_per_s")
    ratios: dict[str, float | None] = {}
    for key in ("a", "b", "c", "e"):
        other = contenders.get(key, {}).get("events_per_s")
        ratios[f"d_vs_{key}"] = d / other if d and other else None
    for scaling in (results.get("scaling"), results.get("scaling4")):
        if scaling and d:
            scaling["vs_one_worker"] = scaling["events_per_s"] / d
    cluster = results.get("cluster") or {}
    one = cluster.get("1", {}).get("events_per_s")
    for run in cluster.values():
        if one:
            run["vs_one_worker"] = run["events_per_s"] / one
    results["ratios"] = ratios
    results["budget"] = budget(results)
    results["goals"] = {
        "events_per_s": {"goal": GOAL_EVENTS_PER_S, "value": d,
                         "met": bool(d and d >= GOAL_EVENTS_PER_S)},
        "vs_quix": {"goal": GOAL_VS_QUIX, "value": ratios.get("d_vs_b"),
                    "met": bool(ratios.get("d_vs_b") and ratios["d_vs_b"] >= GOAL_VS_QUIX)},
        "vs_raw": {"goal": GOAL_VS_RAW, "value": ratios.get("d_vs_a"),
                   "met": bool(ratios.get("d_vs_a") and ratios["d_vs_a"] >= GOAL_VS_RAW)},
    }


def budget(results: dict[str, Any]) -> dict[str, Any] | None:
    """What each throughput goal leaves the worker on this machine, from this run.

    At ``rate`` events/s the machine has ``cores / rate`` of CPU per event in all, and
    the worker's main thread (one thread: the GIL) at most ``1 / rate``. Part of the
    first goes, per event, to Redis and the broker (as measured with the worker) and
    to fetching and decoding the records (what the raw consumer spends: any consumer
    of them pays at least that); what remains is all the worker's sessionizing,
    committing and framework may cost. Each goal's rate is its own for the ratios:
    6x Quix is six times Quix's rate in this run. The worker's own spending is given
    on the same terms (its CPU per event above decoding, its main thread's)."""
    c = results.get("contenders", {})
    d, a = c.get("d"), c.get("a")
    cores = results.get("machine", {}).get("cores")
    if not d or not a or not cores:
        return None
    redis = (d.get("redis_cpu_s_per_100k") or 0.0) * 10
    broker = (d.get("broker_cpu_s_per_100k") or 0.0) * 10
    decode = a["cpu_s_per_100k"] * 10
    rates = [("events_per_s", GOAL_EVENTS_PER_S)]
    quix = c.get("b", {}).get("events_per_s")
    if quix:
        rates.append(("vs_quix", quix * GOAL_VS_QUIX))
    rates.append(("vs_raw", a["events_per_s"] * GOAL_VS_RAW))
    goals = []
    for goal, rate in rates:
        machine = cores / rate * 1e6
        goals.append({
            "goal": goal, "events_per_s": rate, "machine_us_per_event": machine,
            "worker_left_us_per_event": machine - redis - broker - decode,
            "main_thread_us_per_event": 1e6 / rate,
        })
    return {
        "redis_us_per_event": redis, "broker_us_per_event": broker, "decode_us_per_event": decode,
        "worker_now_us_per_event": d["cpu_s_per_100k"] * 10 - decode,
        "main_thread_now_us_per_event": (d.get("threads") or {}).get("main_cpu_us_per_event"),
        "goals": goals,
    }


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(results, default=str))
    for name in ("latency", "latency_light"):
        if slim.get(name):  # the raw samples go to the plot, not the JSON
            slim[name].pop("all_ms", None)
    (out / "latest.json").write_text(json.dumps(slim, indent=2, sort_keys=False) + "\n")
    (out / "latest.md").write_text(markdown(results))
    doc = doc_path(out)
    doc.parent.mkdir(parents=True, exist_ok=True)
    # from what latest.json holds, so that `python -m bench.report` renders the same page
    doc.write_text(performance_doc(slim, doc.parent, out), encoding="utf-8")
    try:
        plot(results, out / "latest.png")
    except ImportError as exc:  # matplotlib missing: everything else still stands
        (out / "latest.png").unlink(missing_ok=True)
        print(f"no plot: {exc}")


# -- markdown --------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(results: dict[str, Any], *, heading: bool = True, commit: bool = True) -> str:
    """The results as Markdown; ``heading=False`` leaves out the title line, ``commit=False``
    the commit the run measured (for pages that state current facts only)."""
    c = results.get("contenders", {})
    opts = results.get("options", {})
    work = results.get("workload", {})
    lines: list[str] = []
    add = lines.append
    smoke = " (smoke run: numbers mean nothing)" if opts.get("smoke") else ""
    if heading:
        add(f"### Benchmark results{smoke}")
        add("")
    add(f"Workload: {opts.get('users', 0):,} users, {work.get('events_sent', 0):,} events in "
        f"{work.get('records', 0):,} records ({work.get('batch_records', 0):,} client batches, "
        f"{work.get('heartbeats', 0):,} heartbeats, {work.get('duplicates', 0):,} duplicates, "
        f"{work.get('out_of_order', 0):,} late, {work.get('bad_records', 0):,} bad records; "
        f"{work.get('sessions_started', 0):,} sessions, {work.get('sessions_ended_by_client', 0):,} "
        f"ended by the client), {work.get('arrival_span_s', 0)} s of traffic, "
        f"{opts.get('partitions')} partitions, seed {opts.get('seed')}; worker inactivity timeout "
        f"{opts.get('inactivity_timeout_s', 0):g} s.")
    add("")
    ratios = results.get("ratios", {})
    scaling = results.get("scaling")
    if c or scaling:
        add("| contender | events/s | (d) ÷ this | CPU s per 100k events | peak RSS "
            "| broker CPU s per 100k | other load |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in ("a", "b", "e", "c", "d"):
        if key not in c:
            continue
        r = c[key]
        ratio = "1.00x" if key == "d" else _x(ratios.get(f"d_vs_{key}"))
        add(f"| ({key}) {NAMES[key]} | {_n(r['events_per_s'])} | {ratio} | {_n(r['cpu_s_per_100k'], 2)} "
            f"| {_mib(r['peak_rss_bytes'])} | {_n(r.get('broker_cpu_s_per_100k'), 2)} "
            f"| {_n(r.get('other_processes_cores'), 2)} |")
    if scaling:
        add(f"| (d) 2 worker processes | {_n(scaling['events_per_s'])} | "
            f"{_x(scaling.get('vs_one_worker'))} of one | {_n(scaling['cpu_s_per_100k'], 2)} "
            f"| {_mib(scaling['peak_rss_bytes'])} each at most | {_n(scaling.get('broker_cpu_s_per_100k'), 2)} "
            f"| {_n(scaling.get('other_processes_cores'), 2)} |")
    if results.get("scaling4"):
        s4 = results["scaling4"]
        add(f"| (d) 4 worker processes | {_n(s4['events_per_s'])} | "
            f"{_x(s4.get('vs_one_worker'))} of one | {_n(s4['cpu_s_per_100k'], 2)} "
            f"| {_mib(s4['peak_rss_bytes'])} each at most | {_n(s4.get('broker_cpu_s_per_100k'), 2)} "
            f"| {_n(s4.get('other_processes_cores'), 2)} |")
    if c or scaling:
        add("")
        add("events/s: events (a batch record counts its elements) from partitions assigned "
            "(Quix: its first record) to the last record processed (the worker: its applied "
            "offsets in Redis at the end of the input). CPU: user + system of the contender's "
            "process(es) in that window. Other load: cores used meanwhile by processes outside "
            "the benchmark.")
    topology = [(1, "one redis-server", c.get("d")), (2, "one redis-server", results.get("scaling")),
                (4, "one redis-server", results.get("scaling4"))]
    topology += [(int(n), "Redis Cluster, 3 masters + 3 replicas", run)
                 for n, run in sorted((results.get("cluster") or {}).items())]
    if any(run for *_, run in topology[1:]):
        add("")
        add("Worker processes and Redis on the same input (Redis CPU: all its processes):")
        add("")
        add("| worker processes | Redis | events/s | worker CPU s per 100k | Redis CPU s per 100k "
            "| broker CPU s per 100k |")
        add("| ---: | --- | ---: | ---: | ---: | ---: |")
        for count, where, run in topology:
            if run:
                add(f"| {count} | {where} | {_n(run['events_per_s'])} | {_n(run['cpu_s_per_100k'], 2)} "
                    f"| {_n(run.get('redis_cpu_s_per_100k'), 2)} | {_n(run.get('broker_cpu_s_per_100k'), 2)} |")
    goals = results.get("goals", {})
    if goals and "d" in c:
        add("")
        marks = {True: "met", False: "**not met**"}
        g = goals
        add(f"Goals: ≥ {GOAL_EVENTS_PER_S:,} events/s: {_n(g['events_per_s']['value'])} "
            f"({marks[g['events_per_s']['met']]}); ≥ {GOAL_VS_QUIX:g}x Quix: {_x(g['vs_quix']['value'])} "
            f"({marks[g['vs_quix']['met']]}); ≥ {GOAL_VS_RAW:g}x raw: {_x(g['vs_raw']['value'])} "
            f"({marks[g['vs_raw']['met']]}).")
    spent = results.get("budget")
    if spent:
        labels = {"events_per_s": f"{GOAL_EVENTS_PER_S:,} events/s",
                  "vs_quix": f"{GOAL_VS_QUIX:g}x Quix", "vs_raw": f"{GOAL_VS_RAW:g}x raw"}
        add("")
        add(f"What each goal leaves the worker on this machine ({results['machine']['cores']} cores "
            "shared by broker, Redis and worker): the CPU per event the machine has at that rate, "
            "less what Redis and the broker took per event with the worker in this run and what "
            "fetching and decoding alone cost (the raw consumer's CPU per event); and the most "
            "the worker's main thread may spend per event at that rate. The worker now: "
            f"{_n(spent['worker_now_us_per_event'], 1)} µs per event above the raw consumer's, "
            f"its main thread {_n(spent['main_thread_now_us_per_event'], 1)} µs.")
        add("")
        add("| goal | at events/s | machine µs per event | Redis | broker | fetch and decode "
            "| left for the worker | main thread at most |")
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        taken = (f"| {_n(spent['redis_us_per_event'], 1)} | {_n(spent['broker_us_per_event'], 1)} "
                 f"| {_n(spent['decode_us_per_event'], 1)} |")
        for row in spent["goals"]:
            add(f"| {labels[row['goal']]} | {_n(row['events_per_s'])} | {_n(row['machine_us_per_event'], 1)} "
                f"{taken} {_n(row['worker_left_us_per_event'], 1)} "
                f"| {_n(row['main_thread_us_per_event'], 1)} |")
    d = c.get("d")
    if d:
        redis = d.get("redis", {})
        out = d.get("outputs", {})
        add("")
        add(f"Worker (d): {d['seconds']:.1f} s for the input after {d.get('startup_s', 0):.1f} s of "
            f"start-up; Redis CPU {_n(d.get('redis_cpu_s_per_100k'), 2)} s per 100k events; "
            f"{out.get('session_records', 0):,} session records out ({_closes(out.get('close_reasons', {}))}), "
            f"{out.get('dead_letters', 0):,} dead letters; Redis afterwards: "
            f"{redis.get('open_sessions', 0):,} open sessions, {redis.get('history_sessions', 0):,} closed "
            f"in the history, used_memory {_mib(redis.get('used_memory'))} = "
            f"{_n(redis.get('bytes_per_open_session'))} bytes per open session (history included).")
        threads = d.get("threads")
        if threads:
            add("")
            add(f"Worker threads in that window: the main thread (event loop: parsing, engine, "
                f"commits) busy {threads['main_busy'] * 100:.0f} % of it, "
                f"{threads['main_cpu_us_per_event']:.1f} µs of CPU per event; the others "
                f"(faust's consumer thread: aiokafka's fetches) {threads['others_busy'] * 100:.0f} %, "
                f"{threads['others_cpu_us_per_event']:.1f} µs per event. They take turns on the GIL: "
                f"what they leave of the window "
                f"({max(0.0, 1 - threads['main_busy'] - threads['others_busy']) * 100:.0f} %) is "
                f"mostly waiting (for Redis, for fetches).")
    lat = results.get("latency")
    if lat:
        add("")
        add(f"Close latency under load (deadline to the closed record read from the sessions topic), "
            f"live load {_n(lat['achieved_events_per_s'])} events/s for {lat['seconds']:.0f} s "
            f"(worker CPU {_n((lat.get('worker_cpu_share') or 0) * 100)} % of a core), "
            f"{lat['probe_sessions']:,} probe sessions:")
        add("")
        add("| live load | close | deadline | p50 | p99 | max | seen |")
        add("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
        for point in (lat, results.get("latency_light")):
            if not point:
                continue
            for kind, deadline in (("timeout", f"last arrival + {point['probe_timeout_s']:g} s"),
                                   ("ended", "arrival of the sessionend")):
                s = point[kind]
                add(f"| {_n(point['achieved_events_per_s'])} events/s | {kind} | {deadline} | "
                    f"{_n(s['p50_ms'])} ms | {_n(s['p99_ms'])} ms | {_n(s['max_ms'])} ms | "
                    f"{s['seen']:,} of {s['probes']:,} |")
        light = results.get("latency_light")
        if light:
            add("")
            add(f"The light-load row is a reference: {_n(light['achieved_events_per_s'])} events/s, "
                f"worker CPU {_n((light.get('worker_cpu_share') or 0) * 100)} % of a core.")
    mem = results.get("memory")
    if mem and mem.get("points"):
        add("")
        add("Memory (fresh worker and Redis; each session opened by one `session` event with "
            "environment and request data):")
        add("")
        add("| open sessions | Redis used_memory | bytes per session | worker RSS |")
        add("| ---: | ---: | ---: | ---: |")
        for point in mem["points"]:
            add(f"| {point['open_sessions']:,} | {_mib(point['used_memory'])} | "
                f"{_n(point.get('bytes_per_open_session'))} | {_mib(point['worker_rss_bytes'])} |")
        bound = mem.get("cache_bound") or {}
        if bound:
            add("")
            add(f"Key states the worker holds in memory: {bound.get('text')}.")
    m = results.get("machine", {})
    if m:
        add("")
        packages = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
        add(f"Machine: {m.get('cpu', '?')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, "
            f"Linux {m.get('kernel')}, Python {m.get('python')}; redis-server {m.get('redis_server')}, "
            f"{m.get('broker', m.get('tansu', 'tansu'))}{', ' + m['java'] if m.get('java') else ''}; {packages}. Broker, Redis, contender and harness share the machine. "
            f"Run {results.get('generated_at')}"
            + (f" at {m.get('commit', '?')}" if commit else "") + f", {results.get('duration_s')} s.")
    return "\n".join(lines) + "\n"


def _closes(reasons: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in reasons.items()) or "none"


# -- docs/performance.md -----------------------------------------------------------------


def doc_path(out: Path) -> Path:
    """Where a run's page goes: ``docs/performance.md`` for the default results folder,
    else ``performance.md`` beside the run's other results (a smoke run, a quick look)."""
    return DOC if out.resolve() == RESULTS.resolve() else out / "performance.md"


def _rel(target: Path, doc_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), doc_dir.resolve())).as_posix()


def performance_doc(results: dict[str, Any], doc_dir: Path, results_dir: Path) -> str:
    """The whole ``performance.md`` page: how to reproduce, the run's results, what they mean."""
    smoke = results.get("options", {}).get("smoke")
    bench_readme = _rel(REPO / "bench" / "README.md", doc_dir)
    lines = [
        "# Performance",
        "",
        "<!-- Written by `make bench` (bench/report.py) from bench/results/latest.json; "
        "do not edit by hand. -->",
        "",
        "What one worker process takes on one machine, next to other ways of reading the same "
        "input, measured by `make bench`, which also writes this page.",
    ]
    if smoke:
        lines += ["", "**This page comes from a smoke run: its numbers mean nothing.**"]
    lines += [
        "",
        "## How to reproduce",
        "",
        "```sh",
        "make bench                    # the full run (about 6 minutes on 2 cores): bench/results/ and this page",
        "make bench-smoke              # every phase on a tiny input (about a minute), in artifacts/bench-smoke/",
        "python -m bench.report        # this page again from bench/results/latest.json, without a run",
        "python -m bench.hotpath --instructions   # instructions per event of the processor alone",
        "```",
        "",
        "One run starts an embedded Tansu broker and a redis-server (AOF on), publishes one "
        "seeded workload and measures, on that same input and each in a process of its own: "
        "(a) a raw aiokafka consumer decoding with orjson (the ceiling), (b) Quix Streams' "
        "`session_window` (30 s gap, `count()`, `final()`, changelogs off), (c) a bare faust "
        "agent and (d) `sessionizer worker` with every rule of the [contract](contract.md) on; "
        "then two workers on the same input, close latency under a live load, and memory with "
        f"up to 1,000,000 open sessions. How and what it measures: [bench/README.md]({bench_readme}); "
        f"the raw results: [latest.json]({_rel(results_dir / 'latest.json', doc_dir)}).",
        "",
        "CPU seconds on a shared host move by up to a third between runs, and not by the same "
        "factor for every contender: compare the ratios within one run, and compare two versions "
        "of the hot path by their instructions per event (`python -m bench.hotpath "
        "--instructions`, which repeats within a few tenths of a per cent).",
        "",
        "## Results",
        "",
        "The goals: 50,000 events/s for one worker process, 6 times Quix Streams' `session_window`, "
        "a quarter of the raw consumer.",
        "",
        markdown(results, heading=False, commit=False).rstrip("\n"),
        "",
        f"![throughput and close latency]({_rel(results_dir / 'latest.png', doc_dir)})",
    ]
    capacity = _capacity(results)
    if capacity:
        lines += ["", "## What it means for capacity", "", "From the run above:", "", *capacity]
    lines += [
        "",
        "## Where the worker's time goes",
        "",
        "The worker's main thread runs the event loop: parsing, the session rules and the "
        "commits; faust's consumer thread does aiokafka's fetches. Both share the GIL, so the "
        "main thread's CPU per event bounds one process (the thread table above). To look "
        "closer: `python -m bench.run --profile` samples the worker's run with py-spy "
        "(`profile-worker.txt` beside the results), `python -m bench.hotpath --profile` runs "
        "the partition processors alone against a real redis-server and prints cProfile's "
        "top functions. What the hot path does to be quick is in "
        "[design.md](design.md#the-hot-path).",
    ]
    return "\n".join(lines) + "\n"


def _capacity(results: dict[str, Any]) -> list[str]:
    d = results.get("contenders", {}).get("d") or {}
    cpu, redis = d.get("cpu_s_per_100k"), d.get("redis_cpu_s_per_100k")
    out: list[str] = []
    if cpu:
        per_core = 100_000 / cpu
        scaling = results.get("scaling") or {}
        two = (f" Two worker processes took {scaling['vs_one_worker']:.2f}x one, on "
               f"{results.get('machine', {}).get('cores')} cores shared with the broker, Redis and "
               "the harness." if scaling.get("vs_one_worker") else "")
        out.append(f"- **Per worker.** A worker is one Python process: one event loop, at most one "
                   f"core. At {cpu:.2f} CPU seconds per 100k events it takes about "
                   f"{_round(per_core)} events/s on a core of its own.{two}")
    if redis:
        per_redis = 100_000 / redis
        workers = f", about {per_redis / (100_000 / cpu):.1f} workers per Redis master" if cpu else ""
        out.append(f"- **Per Redis core.** Redis spent {redis:.2f} CPU seconds per 100k events (one "
                   f"read and one watched MULTI/EXEC commit per partition batch): one Redis core takes about "
                   f"{_round(per_redis)} events/s{workers}.")
    points = (results.get("memory") or {}).get("points") or []
    if points:
        last = points[-1]
        out.append(f"- **Memory.** Redis holds about {_n(last.get('bytes_per_open_session'))} bytes per "
                   f"open session; the worker's RSS was {_mib(last.get('worker_rss_bytes'))} with "
                   f"{last['open_sessions']:,} open sessions, bounded by `SESSIONIZER_STATE_CACHE_KEYS` "
                   "whatever their number.")
    if out:
        out.append("- **Partitions** are the unit of parallelism: a partition is owned by one worker "
                   "at a time, so workers beyond the partition count wait as standbys. The scaling "
                   "model and Redis Cluster: [scaling.md](scaling.md); running more workers: "
                   "[operations.md](operations.md#partitions-bound-the-workers).")
    return out


def _round(value: float) -> str:
    return f"{round(value, -3):,.0f}" if value >= 10_000 else f"{round(value, -2):,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Render docs/performance.md from bench/results/latest.json (no benchmark run).")
    parser.add_argument("--check", action="store_true", help="only check that the committed page is current")
    args = parser.parse_args(argv)
    results = json.loads((RESULTS / "latest.json").read_text(encoding="utf-8"))
    text = performance_doc(results, DOC.parent, RESULTS)
    if args.check:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            print("docs/performance.md is out of date: run `python -m bench.report`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0


# -- plot -------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    c = results.get("contenders", {})
    labels, values = [], []
    for key in ("a", "b", "e", "c", "d"):
        if key in c:
            labels.append(f"({key}) {NAMES[key]}")
            values.append(c[key]["events_per_s"])
    if results.get("scaling"):
        labels.append("(d) 2 worker processes")
        values.append(results["scaling"]["events_per_s"])
    lat = results.get("latency")
    fig, axes = plt.subplots(1, 2 if lat else 1, figsize=(13 if lat else 8, 4.8), squeeze=False)
    ax = axes[0][0]
    colors = ["#888888", "#4c72b0", "#dd8452", "#55a868", "#2d7a3e"][: len(values)]
    bars = ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for bar, value in zip(bars, values[::-1], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}",
                va="center", fontsize=9)
    ax.axvline(GOAL_EVENTS_PER_S, color="#c44e52", linestyle="--", linewidth=1)
    ax.text(GOAL_EVENTS_PER_S, -0.6, " goal 50k", color="#c44e52", fontsize=8, va="bottom")
    ax.set_xlabel("events/s (one process each unless noted)")
    ax.set_title("Throughput, same input, same broker")
    ax.set_xlim(0, max([*values, GOAL_EVENTS_PER_S]) * 1.25)
    if lat:
        ax2 = axes[0][1]
        drawn = False
        for point, style in ((lat, "-"), (results.get("latency_light"), ":")):
            if not point:
                continue
            for kind, color in (("timeout", "#4c72b0"), ("ended", "#dd8452")):
                values_ms = [max(v, 1.0) for v in point.get("all_ms", {}).get(kind, [])]
                if not values_ms:
                    continue
                ordered = sorted(values_ms)
                ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
                s = point[kind]
                ax2.plot(ordered, ys, style, color=color,
                         label=f"{kind} @ {point['achieved_events_per_s']:,.0f}/s: p50 {s['p50_ms']:,.0f} ms, "
                               f"p99 {s['p99_ms']:,.0f} ms")
                drawn = True
        if drawn:
            ax2.set_xscale("log")
            ax2.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax2.legend(loc="upper left", fontsize=8)
            ax2.set_ylim(0, 1.02)
        ax2.set_xlabel("deadline → closed record seen on the sessions topic (ms)")
        ax2.set_ylabel("share of probe sessions")
        ax2.set_title(f"Close latency under {lat['achieved_events_per_s']:,.0f} events/s live load")
        ax2.grid(True, alpha=0.3)
    machine = results.get("machine", {})
    fig.suptitle(f"sessionizer benchmark, {machine.get('cores')} cores ({machine.get('cpu', '')})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- py-spy ------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    found = _FRAME.match(frame.strip())
    if not found:
        return frame.strip()
    path = found["file"]
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{found['func']} ({path})"


def hotspots(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's ``--format raw`` output."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        names = [_short(f) for f in frames]
        self_time[names[-1]] += count
        for name in {n for n, f in zip(names, frames, strict=True) if _area(f) not in _FRAMEWORK}:
            inclusive[name] += count
        by_area[_area(frames[-1])] += count

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": k, "samples": v, "percent": round(100 * v / total, 1) if total else 0}
                for k, v in counter.most_common(top)]

    return {"samples": total, "self": rows(self_time), "inclusive": rows(inclusive),
            "by_area": rows(by_area)}


_FRAMEWORK = {"asyncio", "mode", "faust", "other", "threading / click / runpy"}


def _area(frame: str) -> str:
    if "(<string>" in frame:
        return ("fastjsonschema (compiled validator)" if frame.startswith("validate")
                else "generated code (dataclass __init__ ...)")
    for needle, area in (("threading.py", "threading / click / runpy"), ("click/", "threading / click / runpy"),
                         ("runpy", "threading / click / runpy"), ("(sessionizer)", "threading / click / runpy"),
                         ("pipeline/cli/", "threading / click / runpy"),
                         ("pipeline/core", "pipeline.core (sessionizer engine, parse)"),
                         ("pipeline/store", "pipeline.store (Redis store)"),
                         ("pipeline/worker", "pipeline.worker (processor, sink, app)"),
                         ("orjson", "orjson"), ("fastjsonschema", "fastjsonschema"),
                         ("redis/", "redis-py"), ("aiokafka", "aiokafka"), ("faust", "faust"),
                         ("mode/", "mode"), ("asyncio", "asyncio"), ("selectors.py", "asyncio"),
                         ("hashlib", "hashlib"), ("json", "json")):
        if needle in frame:
            return area
    return "other"


def hotspots_text(summary: dict[str, Any]) -> str:
    out = [f"py-spy samples: {summary['samples']:,} (non-idle threads of the worker)", ""]
    for title, key in (("by area (self time)", "by_area"), ("self time", "self"),
                       ("inclusive (self + callees; event loop, threads and CLI frames left out)", "inclusive")):
        out.append(f"== {title}")
        for row in summary[key]:
            out.append(f"{row['percent']:5.1f}%  {row['function']}")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
