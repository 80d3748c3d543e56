"""The names and entries of :mod:`pipeline.store.keys`, for any strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.event import Event
from pipeline.core.rules import SessionRules
from pipeline.core.session import KeyState, Session
from pipeline.store.keys import (
    index_entry,
    keyid,
    parse_index_entry,
    parse_keyid,
    parse_who_member,
    utf8_len,
    who_member,
    who_prefix,
    who_range,
)
from pipeline.store.redis import _index_of

names = st.text(min_size=1, max_size=12)


@given(names, names, st.one_of(st.none(), names))
def test_an_index_entry_reads_back_whatever_the_names_hold(sid: str, project: str, user: str | None) -> None:
    entry = index_entry(sid, project, user)
    assert parse_index_entry(entry.encode()) == (sid, project, user or "")


@given(names, names, st.one_of(st.none(), names))
def test_the_store_writes_the_entry_of_keys_index_entry(sid: str, project: str, user: str | None) -> None:
    ev = Event(type="usage", time_ms=1, arrival_ms=1, project=project, user_id=user, session_id=sid)
    session = Session.begin(sid, ev)
    session.add(ev, SessionRules())
    assert _index_of(KeyState(ev.key, open=session)) == index_entry(sid, project, user)
    assert _index_of(KeyState(ev.key)) == ""


@given(names, st.sampled_from(["u", "s"]), names)
def test_a_keyid_reads_back(project: str, kind: str, ident: str) -> None:
    assert parse_keyid(keyid((project, kind, ident))) == (project, kind, ident)


def test_lengths_are_counted_in_utf8_bytes() -> None:
    assert utf8_len("shop") == 4
    assert utf8_len("café") == 5
    assert utf8_len("プ") == 3
    assert index_entry("s1", "café", "zoë") == "2:5:s1cafézoë"


def test_an_entry_not_cut_by_lengths_is_refused() -> None:
    with pytest.raises(ValueError, match="not an index entry"):
        parse_index_entry(b"s-bob-01\x1fshop\x1fbob")


@given(names, names, st.one_of(st.none(), names))
def test_a_who_member_reads_back_and_sorts_under_its_prefixes(sid: str, project: str, user: str | None) -> None:
    member = who_member(sid, project, user)
    assert parse_who_member(member.encode()) == (sid, project, user or "")
    for prefix in (who_prefix(project), who_prefix(project, user or "")):
        low, high = who_range(prefix)
        assert low[1:] <= member.encode() < high[1:]


@given(names, names, names, names)
def test_no_project_or_user_prefix_starts_another(p1: str, u1: str, p2: str, u2: str) -> None:
    if p1 != p2:
        assert not who_member("s", p2, u2).startswith(who_prefix(p1))
    if (p1, u1) != (p2, u2):
        assert not who_member("s", p2, u2).startswith(who_prefix(p1, u1))
