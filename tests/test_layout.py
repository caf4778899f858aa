"""The layout's rules, read off the source: one namespace, core/ pure, no import cycle.

Each rule is checked on the modules' syntax trees (every ``import`` and ``from ... import``,
at module level or inside functions), so a late import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"modeld.core": REPO / "core", "modeld.daemon": REPO / "daemon"}

# What core/ may not use: it starts no thread or process, serves nothing, schedules nothing.
CORE_FORBIDDEN = ("threading.Thread", "subprocess", "multiprocessing", "os.fork",
                  "concurrent.futures", "watchdog", "apscheduler", "fastapi", "uvicorn",
                  "signal", "modeld.daemon")


def modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every dotted name ``path`` imports, relative imports resolved against ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {module: {name for name in imported_names(path, module) if name in known} - {module}
            for module, path in known.items()}


def test_every_module_lives_in_the_modeld_namespace() -> None:
    for module, path in modules().items():
        for name in imported_names(path, module):
            assert name.split(".")[0] not in ("core", "daemon"), \
                f"{path.relative_to(REPO)} imports {name!r}: use modeld.{name}"


def test_core_starts_no_thread_or_process_and_never_imports_the_daemon() -> None:
    for module, path in modules().items():
        if not module.startswith("modeld.core"):
            continue
        source = path.read_text()
        names = set(imported_names(path, module))
        for forbidden in CORE_FORBIDDEN:
            top = forbidden.split(".")[0]
            used = any(n == forbidden or n.startswith(forbidden + ".") for n in names) or (
                "." in forbidden and top in names and forbidden in source)
            assert not used, f"{path.relative_to(REPO)} uses {forbidden}"


def test_every_c_source_is_an_extension_named_by_its_path_with_a_stub() -> None:
    # setuptools builds what pyproject's ext-modules lists (core/_forest.c is the tree walk);
    # a C file it does not list would never run, and mypy sees a module only by its stub.
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    extensions = config["tool"]["setuptools"]["ext-modules"]
    sources = sorted(path.relative_to(REPO).as_posix()
                     for root in ROOTS.values() for path in root.rglob("*.c"))
    assert sorted(source for ext in extensions for source in ext["sources"]) == sources
    for ext in extensions:
        (source,) = ext["sources"]
        path = REPO / source
        package, root = next((p, r) for p, r in ROOTS.items() if path.is_relative_to(r))
        assert ext["name"] == ".".join((package, *path.relative_to(root).with_suffix("").parts))
        assert path.with_suffix(".pyi").is_file(), f"{source} has no type stub"
        assert importlib.import_module(ext["name"]).__file__ is not None


def test_no_import_cycle() -> None:
    graph = import_graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = [*stack[stack.index(target):], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checks_see_a_cycle_and_a_forbidden_import(tmp_path: Path) -> None:
    """The checks above would catch what they look for (a cycle, a thread in core)."""
    (tmp_path / "a.py").write_text("from modeld.core import b\nimport threading.Thread\n")
    names = set(imported_names(tmp_path / "a.py", "modeld.core.a"))
    assert "modeld.core.b" in names and "threading.Thread" in names
    (tmp_path / "c.py").write_text("from . import d\nfrom ..daemon import e\n")
    names = set(imported_names(tmp_path / "c.py", "modeld.core.c"))
    assert {"modeld.core.d", "modeld.daemon.e"} <= names
