"""The documentation stays proportionate to its job and its links lead somewhere (issue 35, part 1).

README.md and bench/README.md within their sizes; every relative link (and `#anchor`) in them and in docs/ resolves;
no README line outside code blocks runs past 200 characters; the README's test command is the one .ci/run runs;
every path the README's Layout block names exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
BENCH = ROOT / "bench" / "README.md"
DOCS = sorted([README, BENCH, *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for each line outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text()):
        heading = HEADING.match(line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(2).replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in prose_lines(path.read_text()):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: are not checked here
                links.append((number, target))
    return links


def test_the_readme_and_the_benchmark_page_stay_within_their_sizes() -> None:
    assert len(README.read_text()) <= 15_000, "README.md: move detail into the docs/ page it belongs to"
    assert len(BENCH.read_text()) <= 12_000, "bench/README.md: the latest results and a short past table only"


@pytest.mark.parametrize("page", DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for number, target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_link_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A page\n\n## Its `second` part\n\n[ok](#its-second-part) [bad](b.md) [x](#nope)\n")
    links = dict((target, number) for number, target in relative_links(tmp_path / "a.md"))
    assert set(links) == {"#its-second-part", "b.md", "#nope"}
    assert anchors(tmp_path / "a.md") == {"a-page", "its-second-part"}


def test_no_readme_line_outside_code_blocks_runs_past_200_characters() -> None:
    lines = prose_lines(README.read_text())
    too_long = [f"README.md:{number}: {len(line)} characters" for number, line in lines if len(line) > 200]
    assert not too_long, "\n".join(too_long)


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    command = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/pytest"
    assert f"\n{command}\n" in README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.replace("pip install -e", "pip install -q -e") in ci


def test_every_path_the_readme_layout_block_names_exists() -> None:
    section = README.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    names = []
    for line in block.splitlines()[1:]:
        column = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        names += [name.strip() for name in column.split(",") if name.strip()]
    assert names
    missing = [name for name in names if not (ROOT / name).exists()]
    assert not missing, f"the README's Layout block names {missing}: update it to the folders as they are"
