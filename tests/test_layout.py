"""The architecture holds: no import cycles, a pure engine, libraries behind their packages.

Every module under `collector/` is read with `ast`; its imports (top-level or inside functions,
except those only for type checking) are the edges checked here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "collector"


def module_name(path: Path) -> str:
    """`collector/admin/api.py` -> `collector.admin.api`; a package's `__init__` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node`, skipping `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking_only(child):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def imports(module: str) -> set[str]:
    """The absolute names a module imports: `collector.x.y` modules resolved, others as given."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def internal(module: str) -> set[str]:
    """The collector modules a module imports."""
    return {name for name in GRAPH[module] if name in MODULES and name != module}


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_walk_sees_the_known_edges() -> None:
    # guards the test itself: if these are not seen, the checks below prove nothing
    assert "collector.engine.scope" in internal("collector.engine.conditions")
    assert "collector.admin.api" in internal("collector.app")
    assert "redis" in {top(name) for name in GRAPH["collector.redis.connection"]}
    assert "httpx" in {top(name) for name in GRAPH["collector.delivery.transport"]} | {
        top(name) for name in GRAPH["collector.delivery.sender"]
    }


def test_no_import_cycles() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(internal(module)):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == []


# The layering, bottom up: each part of the package and the parts it may import (besides itself
# and the package's face, `collector/__init__.py`). A module not in a part listed here, or an
# import a part is not given, fails `test_the_layering_holds`: place new code in this table.
LAYERS: dict[str, set[str]] = {
    "events": set(),
    "webhook": set(),
    "errors": set(),
    "security": set(),
    "config": {"errors"},
    "engine": {"config", "errors", "events", "webhook"},
    "metrics": {"engine"},
    "feed": {"events"},
    "server": {"config"},
    "delivery": {"config", "errors", "webhook"},
    "ingest": {"config", "errors", "events", "metrics", "security"},
    "store": {"config", "engine", "errors", "events", "webhook"},
    "definitions": {"config", "engine", "errors"},
    "live": {"config", "definitions", "engine"},
    "memory": {"config", "definitions", "delivery", "engine", "errors", "events", "live",
               "metrics", "store", "webhook"},
    "redis": {"config", "definitions", "delivery", "engine", "errors", "events", "live",
              "metrics", "store", "webhook"},
    "backend": {"config", "definitions", "delivery", "live", "memory", "metrics", "redis",
                "store"},
    "services": {"delivery", "engine", "store", "webhook"},
    "runtime": {"backend", "config", "definitions", "delivery", "engine", "errors", "events",
                "feed", "live", "metrics", "services", "store"},
    "tools": {"backend", "config", "definitions", "delivery", "engine", "errors", "events",
              "ingest", "memory", "server", "store", "webhook"},
    "admin": {"config", "definitions", "delivery", "engine", "errors", "events", "feed",
              "ingest", "runtime", "security", "store", "webhook"},
    "app": {"admin", "config", "errors", "ingest", "metrics", "runtime", "security", "server",
            "tools"},
    "demo": {"app", "config", "errors", "ingest", "server", "tools"},
    "cli": {"app", "config", "demo", "engine", "errors", "redis", "server", "tools"},
}


def part(module: str) -> str:
    """`collector.redis.store` -> `redis`; `collector` itself -> ``."""
    return module.split(".")[1] if "." in module else ""


def test_every_module_has_a_place_in_the_layering() -> None:
    assert {part(m) for m in MODULES} - {""} - set(LAYERS) == set()


def test_the_layering_holds() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module in MODULES
        if part(module)
        for target in internal(module)
        if part(target) not in ("", part(module), *LAYERS[part(module)])
    )
    assert upward == []


def test_the_layering_table_runs_one_way() -> None:
    # a part may only import parts listed before it: the table is an order, not a web
    order = list(LAYERS)
    backwards = sorted(
        f"{name} -> {other}"
        for name, allowed in LAYERS.items()
        for other in allowed
        if order.index(other) >= order.index(name)
    )
    assert backwards == []


ENGINE_MAY_IMPORT = ("collector.engine", "collector.config", "collector.errors",
                     "collector.events", "collector.webhook")
ENGINE_MAY_NOT_USE = {"starlette", "redis", "httpx", "httpcore", "uvicorn"}


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("collector.engine")])
def test_the_engine_is_pure(module: str) -> None:
    libraries = {top(name) for name in GRAPH[module]} & ENGINE_MAY_NOT_USE
    assert libraries == set()
    outside = {
        name for name in internal(module)
        if name != "collector" and not name.startswith(ENGINE_MAY_IMPORT)
    }
    assert outside == set()


@pytest.mark.parametrize(
    ("library", "home"),
    [("redis", "collector.redis"), ("httpx", "collector.delivery"),
     ("httpcore", "collector.delivery")],
)
def test_a_library_is_imported_only_by_its_package(library: str, home: str) -> None:
    users = {module for module, names in GRAPH.items() if library in {top(n) for n in names}}
    assert users and {module for module in users if not module.startswith(home)} == set()


# The demo shop (a static site served beside the collector by `tripwire demo`) is its own app.
ASSEMBLERS = {"collector.app", "collector.demo"}


def test_routes_are_assembled_only_in_the_app() -> None:
    builders = {
        module
        for module, names in GRAPH.items()
        if any(name in ("starlette.routing", "starlette.applications") for name in names)
    }
    assert builders == ASSEMBLERS
