"""Per-project overrides of the session rules (SESSIONIZER_PROJECT_SETTINGS)."""

from __future__ import annotations

import pytest

from pipeline.config import parse_project_settings
from pipeline.core.engine import Sessionizer
from pipeline.core.event import Event
from pipeline.core.rules import SessionRules
from pipeline.exceptions import ConfigError

MIN = 60_000
DEFAULTS = SessionRules(inactivity_timeout_ms=5 * MIN)


def ev(project: str, t: int, type_: str = "usage") -> Event:
    return Event(type=type_, time_ms=t, arrival_ms=t, project=project, user_id="u1")


def test_inline_json_overrides_only_named_settings() -> None:
    rules = parse_project_settings('{"shop": {"inactivity_timeout": 900}}', DEFAULTS)
    assert rules["shop"].inactivity_timeout_ms == 900_000
    assert rules["shop"].reopen_grace_ms == DEFAULTS.reopen_grace_ms
    assert "blog" not in rules


def test_toml_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "projects.toml"
    path.write_text('[blog]\nmax_session_duration = 3600\nreopen_grace = 0\n')
    rules = parse_project_settings(str(path), DEFAULTS)
    assert rules["blog"].max_session_duration_ms == 3_600_000
    assert rules["blog"].reopen_grace_ms == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"shop": {"timeout": 9}}', "unknown setting 'timeout'"),
        ('{"shop": {"inactivity_timeout": -1}}', "must be a number of seconds"),
        ('{"shop": {"inactivity_timeout": true}}', "must be a number of seconds"),
        ('{"shop": {"inactivity_timeout": 0}}', "inactivity_timeout_ms must be > 0"),
        ('{"shop": 5}', "expected an object of settings"),
        ("/nonexistent/projects.json", "cannot read it"),
    ],
)
def test_bad_settings_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_project_settings(text, DEFAULTS)


def test_engine_applies_each_projects_timeout() -> None:
    rules = parse_project_settings('{"shop": {"inactivity_timeout": 900}}', DEFAULTS)
    engine = Sessionizer(DEFAULTS, project_rules=rules)
    engine.apply(ev("shop", 0))
    engine.apply(ev("blog", 0))
    closed = engine.advance(5 * MIN + 1)
    assert [r["project"] for r in closed] == ["blog"]  # default 5 min
    closed = engine.advance(15 * MIN + 1)
    assert [r["project"] for r in closed] == ["shop"]  # its own 15 min
    # inside shop's longer span, an event 10 min after the last still extends
    engine.apply(ev("shop", 30 * MIN))
    out = engine.apply(ev("shop", 40 * MIN))
    assert out.records == []
