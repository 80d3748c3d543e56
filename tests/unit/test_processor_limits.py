"""The processor's limits on what goes out and on the clocks coming in: session records and
dead letters that fit the broker's default message size, a record that made processing
fail dead-lettered as ``processing_failed``, and record timestamps clamped to the wall
clock + ``max_future_skew`` (SPEC sections 3, 4 and 6). Store: the in-memory twin."""

from __future__ import annotations

import orjson
from test_processor_memory import MIN, SEC, T0, Env, MemoryWorld, run

from pipeline.core.fit import encode_session
from pipeline.core.rules import SessionRules
from pipeline.worker.outbox import DEAD_LETTER, SESSION

MIB = 1 << 20
YEAR_MS = 365 * 24 * 3600 * 1000
RULES = SessionRules(inactivity_timeout_ms=5 * MIN, reopen_grace_ms=15 * MIN,
                     max_session_duration_ms=60 * MIN)  # max_event_bytes: the default 64 KiB


def test_a_session_of_twenty_60_kb_events_is_trimmed_under_the_limit() -> None:
    async def scenario(world: MemoryWorld) -> None:
        env = Env(world, rules=RULES)
        proc = await env.processor()
        blob = "x" * 60_000
        records = [env.event("session", at=0, id="e0", message=blob)]
        records += [env.event("usage", at=i * SEC, id=f"e{i}", message=blob,
                              data={f"k{i}": "y" * 1000}) for i in range(1, 19)]
        records.append(env.event("sessionend", at=19 * SEC, id="e19", message=blob))
        assert all(len(r.value or b"") < 65_536 for r in records)
        await proc.process(records)
        [message] = env.sink.of(SESSION)
        assert len(message.value) <= 1_000_000 < MIB
        session = orjson.loads(message.value)
        assert session["truncated"] is True and session["events_truncated"] is True
        assert session["event_count"] == 20  # the counts stay whole
        assert 0 < len(session["events"]) < 20
        assert [e["id"] for e in session["events"]] == [f"e{i}" for i in range(len(session["events"]))]
        assert session["data"] == {f"k{i}": "y" * 1000 for i in range(1, 19)}  # events went first

    run(MemoryWorld(), scenario)  # type: ignore[arg-type]


def test_a_session_under_the_limit_is_sent_as_it_is() -> None:
    async def scenario(world: MemoryWorld) -> None:
        env = Env(world, rules=RULES)
        proc = await env.processor()
        await proc.process([env.event("session", at=0, id="a"), env.event("sessionend", at=SEC, id="b")])
        [session] = env.sink.sessions()
        assert "truncated" not in session and session["events_truncated"] is False

    run(MemoryWorld(), scenario)  # type: ignore[arg-type]


def test_a_dead_letter_of_200_kb_of_control_bytes_is_cut_to_fit() -> None:
    async def scenario(world: MemoryWorld) -> None:
        env = Env(world, rules=RULES)
        proc = await env.processor()
        value = bytes(range(1, 32)) * (200_000 // 31)
        await proc.process([env.record(value, key=b"k")])
        [message] = env.sink.of(DEAD_LETTER)
        assert len(message.value) < MIB
        letter = orjson.loads(message.value)
        assert letter["error"] == "too_large" and letter["value_truncated"] is True
        assert letter["value"].encode() == value[:RULES.max_event_bytes]
        assert (letter["partition"], letter["offset"]) == (0, 0)

    run(MemoryWorld(), scenario)  # type: ignore[arg-type]


def test_a_dead_letter_is_cut_further_when_the_escaped_json_would_not_fit() -> None:
    async def scenario(world: MemoryWorld) -> None:
        # 512 KiB per event: 6 JSON bytes per control byte would make a 3 MB letter
        rules = SessionRules(inactivity_timeout_ms=5 * MIN, max_event_bytes=512 * 1024)
        env = Env(world, rules=rules)
        proc = await env.processor()
        value = b"\x01" * 600_000
        await proc.process([env.record(value, key=b"k")])
        [message] = env.sink.of(DEAD_LETTER)
        letter = orjson.loads(message.value)
        assert len(message.value) <= 1_000_000 and letter["value_truncated"] is True
        assert value.startswith(letter["value"].encode())

    run(MemoryWorld(), scenario)  # type: ignore[arg-type]


def test_reject_dead_letters_a_record_as_processing_failed_and_moves_on() -> None:
    async def scenario(world: MemoryWorld) -> None:
        env = Env(world, rules=RULES)
        proc = await env.processor()
        poison = env.event("usage", user="bob", at=0, id="p")
        after = env.event("session", user="carol", at=SEC, id="c")
        stats = await proc.reject(poison, "processing the record failed 3 times: ValueError: boom")
        assert stats.rejected == {"processing_failed": 1}
        [letter] = env.sink.dead_letters()
        assert letter["error"] == "processing_failed" and "ValueError: boom" in letter["detail"]
        assert (letter["partition"], letter["offset"], letter["key"]) == (0, 0, "bob")
        assert orjson.loads(letter["value"])["id"] == "p"
        assert proc.resume_offset("events") == 1
        await proc.process([poison, after])  # replayed: the rejected record is not applied again
        [live] = await proc.store.open_sessions()
        assert live["user_id"] == "carol"
        assert await proc.reject(poison, "again") == type(stats)()  # applied already: nothing
        assert len(env.sink.dead_letters()) == 1

    run(MemoryWorld(), scenario)  # type: ignore[arg-type]


def test_a_record_timestamp_years_ahead_never_moves_the_stream_clock() -> None:
    async def scenario(world: MemoryWorld) -> None:
        env = Env(world, rules=RULES)
        proc = await env.processor()
        await proc.process([env.event("session", user="alice", at=0, id="a1")])
        for ahead in (10 * YEAR_MS, 253_402_300_800_000 - T0 + YEAR_MS):  # ten years; past 9999
            forged = env.event("usage", user="mallory", at=0, arrival=ahead, id=f"m{ahead}")
            stats = await proc.process([forged])
            assert stats.arrivals_clamped == 1
            assert proc.clock_ms <= T0 + RULES.max_future_skew_ms
            await proc.tick(caught_up=True)
            assert env.sink.sessions() == []  # alice's session is not closed by it
        saved = await proc.store.claim(0)  # what a next owner reads from the store
        assert saved.clock_ms <= T0 + RULES.max_future_skew_ms
        assert {s["user_id"] for s in await proc.store.open_sessions()} == {"alice", "mallory"}

    run(MemoryWorld(), scenario)  # type: ignore[arg-type]


def test_the_encoder_replaces_what_orjson_refuses() -> None:
    deep: object = "leaf"
    for _ in range(300):
        deep = {"d": deep}
    record = {"session_id": "s", "data": {"deep": deep, "ok": 1}, "events": []}
    encoded = orjson.loads(encode_session(record, 1_000_000))
    assert encoded["data"] == {"deep": None, "ok": 1} and encoded["truncated"] is True


def test_the_encoder_keeps_the_head_when_nothing_else_fits() -> None:
    record = {"session_id": "s" * 5000, "project": "p", "status": "closed", "revision": 2,
              "data": {}, "events": []}
    encoded = encode_session(record, 4096)
    assert len(encoded) <= 4096
    head = orjson.loads(encoded)
    assert head["truncated"] is True and head["revision"] == 2 and head["project"] == "p"
