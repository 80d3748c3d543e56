"""Generated documentation stays in step with its sources.

``docs/configuration.md`` is written by ``scripts/gen_config_doc.py`` from the settings'
own descriptions; ``docs/performance.md`` by ``make bench`` (``bench/report.py``) from
``bench/results/latest.json``. Each test renders the page again and compares.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    path = REPO / "scripts" / "gen_config_doc.py"
    spec = importlib.util.spec_from_file_location("gen_config_doc", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_config_doc", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _generator()


def test_every_setting_has_a_description(gen: ModuleType) -> None:
    missing = gen.missing_descriptions()
    assert not missing, (
        f"settings without description= (docs/configuration.md would say nothing of them): "
        f"{', '.join(missing)}; add a description= to each field"
    )


def test_configuration_doc_is_current(gen: ModuleType) -> None:
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == gen.render(), (
        "docs/configuration.md differs from the settings' descriptions: "
        "run `python scripts/gen_config_doc.py` and commit the result"
    )


def test_configuration_doc_lists_every_variable(gen: ModuleType) -> None:
    text = gen.render()
    from pipeline.config import Settings
    from pipeline.gateway.settings import GatewaySettings
    from pipeline.report.settings import ReportSettings

    for cls in (Settings, GatewaySettings, ReportSettings):
        for name in cls.model_fields:
            assert f"| `{gen.env_name(cls, name)}` |" in text
    assert "| `SESSIONIZER_INACTIVITY_TIMEOUT` | `300` | number, > 0 |" in text
    assert "| `SESSIONIZER_KAFKA_IDEMPOTENCE` | `auto` | one of `auto`, `on`, `off` |" in text
    assert "| `SESSIONIZER_REPORT_ENABLED` | `true` | `true` or `false` |" in text
    assert "| `SESSIONIZER_REDIS_PASSWORD` | (none) | text (secret: never logged) |" in text


def test_performance_doc_is_current() -> None:
    from bench import report

    results = json.loads((REPO / "bench" / "results" / "latest.json").read_text(encoding="utf-8"))
    expected = report.performance_doc(results, REPO / "docs", REPO / "bench" / "results")
    committed = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    assert committed == expected, (
        "docs/performance.md differs from what bench/report.py renders from "
        "bench/results/latest.json: run `python -m bench.report` (or `make bench` for new numbers)"
    )


def test_a_run_writes_the_page_where_its_results_are(tmp_path: Path) -> None:
    from bench import report

    results = json.loads((REPO / "bench" / "results" / "latest.json").read_text(encoding="utf-8"))
    results["options"]["smoke"] = True
    out = tmp_path / "bench-smoke"
    report.write(results, out)
    page = (out / "performance.md").read_text(encoding="utf-8")
    assert "smoke run: its numbers mean nothing" in page
    assert "](latest.png)" in page and "](latest.json)" in page
    assert report.doc_path(REPO / "bench" / "results") == REPO / "docs" / "performance.md"
    assert f" at {results['machine']['commit']}," not in page  # the page names no commit
