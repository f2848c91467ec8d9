"""The code's layout (issue 35): no import cycles, layers that import only downwards, modules under ~400 lines, and the
README's "Layout" block naming the folders that exist.

Read statically (ast), over every module of the project's packages. Every import counts: at module level, inside a
function (a late import is still a dependency) and under `if TYPE_CHECKING:`. `from package import name` counts as
an import of the submodule `package.name` when there is one, else of `package`. Python's implicit import of a
module's parent packages is not counted: a package's `__init__` importing its own submodules (gateway/cli/) is the
usual way to assemble a package, not a cycle.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("adapters", "common", "fhir_mapping", "gateway")
# what each layer may not import: common below everything, adapters (bytes -> source models) below fhir_mapping
# (source models -> FHIR), both below gateway
FORBIDDEN = {
    "common": ("adapters", "fhir_mapping", "gateway"),
    "adapters": ("fhir_mapping", "gateway"),
    "fhir_mapping": ("gateway",),
}
MAX_LINES = 400
# Modules still over MAX_LINES, each to be split by concern (issue 35); remove a name once its module is under.
OVER_400_LINES_TO_SPLIT: frozenset[str] = frozenset()


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(name: str, path: Path) -> Iterator[str]:
    """The project modules `name` (at `path`) imports, anywhere in it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for target in targets:
            while target and target not in MODULES:  # `import gateway.platform.store.db` names a module; a name in it, its module
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: set(_imported(name, path)) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import one another, directly or round a loop (Tarjan's strongly connected
    components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(groups)


def test_the_layout_check_reads_the_packages_and_their_imports() -> None:
    """The checks below see what they check: the packages' modules, and imports written each way."""
    assert {"adapters.bars", "common.datetimes", "fhir_mapping.provenance", "gateway.platform.store.db", "gateway.cli"} <= set(MODULES)
    assert "common.datetimes" in GRAPH["adapters.bars"]  # module level, `from x.y import name`
    assert "gateway.platform.store.group_commit" in GRAPH["gateway.platform.store.db"]  # inside a function
    assert "gateway.cli.clients" in GRAPH["gateway.cli"]  # `from package import submodule`
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert _cycles(loop) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_adapters_import_neither_fhir_mapping_nor_gateway_and_fhir_mapping_not_gateway() -> None:
    wrong = sorted(
        f"{module} imports {other}"
        for module, imported in GRAPH.items()
        for layer, forbidden in FORBIDDEN.items()
        if module.split(".")[0] == layer
        for other in imported
        if other.split(".")[0] in forbidden
    )
    assert wrong == []


def test_no_module_over_400_lines() -> None:
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    over = {name for name, length in lengths.items() if length > MAX_LINES}
    assert sorted(over - OVER_400_LINES_TO_SPLIT) == []
    assert sorted(OVER_400_LINES_TO_SPLIT - over) == [], "split now: take it off OVER_400_LINES_TO_SPLIT"


def _layout_block() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^## Layout\n+```\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert found, 'README.md has no "## Layout" heading followed by a fenced block'
    return found.group(1).splitlines()


def test_the_readme_layout_block_names_every_package_folder_and_only_folders_that_exist() -> None:
    # a line: the folders and files (comma-separated), then two or more spaces, then what they hold
    named = {name for line in _layout_block() for name in re.split(r"\s{2,}", line)[0].split(", ") if name.endswith("/")}
    assert sorted(p for p in named if not (ROOT / p).is_dir()) == []
    packages = {f"{p}/" for p in PACKAGES} | {
        f"gateway/{folder.name}/" for folder in (ROOT / "gateway").iterdir() if (folder / "__init__.py").is_file()
    }
    assert sorted(packages - named) == []
