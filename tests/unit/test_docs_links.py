"""The README and the docs: every relative link resolves inside the repository.

A link's file must exist in the repository (not outside it: the contract is
``docs/contract.md``, not a file beside the checkout), and a link to a heading of a
Markdown file must name a heading that file has (GitHub's anchors).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", "node_modules", "artifacts", "build", "dist"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    files = []
    for path in sorted(REPO.rglob("*.md")):
        parts = path.relative_to(REPO).parts
        if any(part in SKIP_DIRS or part.startswith(".") for part in parts[:-1]):
            continue
        files.append(path)
    return files


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        heading = _HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        out += [(number, m.group(1)) for m in _LINK.finditer(_CODE_SPAN.sub("", line))]
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        where = f"{path.relative_to(REPO)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        try:
            resolved.relative_to(REPO)
        except ValueError:
            problems.append(f"{where} points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: {resolved.name} has no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_checker_sees_links_and_anchors(tmp_path: Path) -> None:
    assert slug("7. Configuration (environment variables)") == "7-configuration-environment-variables"
    assert slug("`sessionizer status`") == "sessionizer-status"
    assert slug("GatewaySettings (`pipeline.gateway.settings`)") == "gatewaysettings-pipelinegatewaysettings"
    assert links(REPO / "README.md"), "no links found in README.md"
    assert "design.md#redis-key-layout" in [t for _, t in links(REPO / "docs" / "contract.md")]


def test_readme_is_short_and_links_the_docs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "README.md is over 250 lines: move details into docs/"
    targets = {t.partition("#")[0] for _, t in links(REPO / "README.md")}
    assert "docs/contract.md" in targets
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in targets, f"README.md's documentation index misses docs/{page.name}"
    assert "LICENSE" in targets and (REPO / "LICENSE").exists()


def test_readme_session_record_example_matches_the_schema() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```json\n(\{\"session_id\".*?)```", readme, re.S)
    assert example, "README.md shows no session record"
    schema = json.loads((REPO / "pipeline" / "schemas" / "session.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(json.loads(example.group(1)), schema, format_checker=jsonschema.FormatChecker())
