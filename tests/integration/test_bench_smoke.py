"""The benchmark keeps working: a tiny run of every phase, end to end, speed not judged.

``python -m bench.run --smoke`` (500 users, 5,000 events, 10,000 open sessions) starts
its own broker (Apache Kafka, and then Kafka Streams is the fifth contender; Tansu
without it where Java or Maven is missing), redis-server and Redis Cluster and runs the
contenders, two workers, the live close-latency phase and the memory phase, four workers,
and 1, 2 and 4 workers on a Redis Cluster. This checks that the result files
are written and that every number that must be positive is; it asserts nothing
about how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.devtools.apache_kafka import kafka_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
MISSING = [name for name in ("quixstreams", "confluent_kafka", "matplotlib", "psutil")
           if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"the benchmark's packages are not installed ({', '.join(MISSING)}): "
    "pip install -r bench/requirements.txt",
)


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.mark.timeout(800)
def test_bench_smoke_runs_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "results"
    on_kafka = kafka_unavailable_reason() is None
    options = [] if on_kafka else ["--broker", "tansu", "--only", "a,b,c,d,scale,scale4,cluster,latency,memory"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out), *options],
        cwd=REPO, capture_output=True, text=True, timeout=780,
    )
    assert proc.returncode == 0, f"bench.run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    for name in ("latest.json", "latest.md", "latest.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((out / "latest.json").read_text())
    work = results["workload"]
    assert work["events_sent"] == 5000 and work["records"] > 0
    keys = ["a", "b", "c", "e", "d"] if on_kafka else ["a", "b", "c", "d"]
    for key in keys:
        contender = results["contenders"][key]
        assert contender["events"] == work["events_sent"], key
        for field in ("events_per_s", "seconds", "cpu_s_per_100k", "peak_rss_bytes"):
            assert positive(contender[field]), (key, field, contender[field])
    for ratio in [f"d_vs_{key}" for key in keys if key != "d"]:
        assert positive(results["ratios"][ratio]), ratio

    worker = results["contenders"]["d"]
    assert positive(worker["redis"]["open_sessions"])
    assert positive(worker["redis"]["bytes_per_open_session"])
    assert positive(worker["outputs"]["session_records"])
    assert positive(worker["outputs"]["dead_letters"])  # the workload has bad records

    scaling = results["scaling"]
    assert scaling["workers"] == 2
    assert positive(scaling["events_per_s"]) and positive(scaling["vs_one_worker"])
    assert results["scaling4"]["workers"] == 4 and positive(results["scaling4"]["events_per_s"])
    cluster = results["cluster"]  # 1, 2 and 4 workers on a Redis Cluster
    assert sorted(cluster) == ["1", "2", "4"]
    for count, run in cluster.items():
        assert run["workers"] == int(count) and positive(run["events_per_s"]), count

    latency = results["latency"]
    for kind in ("timeout", "ended"):
        assert latency[kind]["seen"] > 0, kind
        assert latency[kind]["p50_ms"] is not None and latency[kind]["p99_ms"] is not None, kind

    points = results["memory"]["points"]
    assert [p["open_sessions"] for p in points] == [0, 1_000, 2_500, 5_000, 10_000]
    assert all(positive(p["worker_rss_bytes"]) for p in points)
    assert positive(points[-1]["bytes_per_open_session"])

    table = (out / "latest.md").read_text()
    assert "sessionizer worker" in table and "Quix Streams" in table
    if on_kafka:
        assert "Kafka Streams" in table and "Apache Kafka" in table
    assert "| 4 | Redis Cluster, 3 masters + 3 replicas |" in table
