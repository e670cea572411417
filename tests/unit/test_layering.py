"""The package's layering, read from the source of every module.

* the framework adapters (``usageflow/integrations/``) never import a store
  (``usageflow.stores`` or anything under it): they meter through the flow;
* the core (everything outside ``usageflow/integrations/``) imports no web framework and no
  adapter, with one exception: ``usageflow/__init__.py`` re-exports ``metered`` from
  ``usageflow.integrations.metered``, which itself imports no framework;
* only ``usageflow/stripe/`` and the adapters import the ``stripe`` library.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import usageflow

PACKAGE_DIR = Path(usageflow.__file__).resolve().parent
#: Web frameworks (and their toolkits), by top-level package name.
FRAMEWORKS = frozenset({"starlette", "fastapi", "flask", "werkzeug", "django", "litestar"})
#: The one import of an adapter the core may make.
ALLOWED_CORE_IMPORTS = {("usageflow", "usageflow.integrations.metered")}


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def in_integrations(self) -> bool:
        return _under(self.name, "usageflow.integrations")

    @property
    def in_stripe_package(self) -> bool:
        return _under(self.name, "usageflow.stripe")


def _modules() -> list[Module]:
    """Every module of the package, each imported (none skipped), with its source file."""
    found = [Module("usageflow", Path(usageflow.__file__).resolve(), True)]
    for info in pkgutil.walk_packages(usageflow.__path__, "usageflow."):
        module = importlib.import_module(info.name)
        assert module.__file__ is not None, info.name
        found.append(Module(info.name, Path(module.__file__).resolve(), info.ispkg))
    return found


MODULES = _modules()


def _import_statements(module: Module) -> list[tuple[str, list[str]]]:
    """Every import statement of ``module``, wherever it is written, as ``(source, names)``:
    ``import x.y`` is ``("x.y", [])``; ``from x import a, b`` is ``("x", ["a", "b"])``, with
    relative sources resolved."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.append((source, [a.name for a in node.names if a.name != "*"]))
    return found


def imports_of(module: Module) -> set[str]:
    """The absolute names of every module ``module`` imports, wherever the import is written
    (relative imports resolved; ``from x import y`` gives ``x`` and ``x.y``)."""
    names: set[str] = set()
    for source, imported in _import_statements(module):
        names.add(source)
        names.update(f"{source}.{name}" for name in imported)
    return names


def _framework(name: str) -> bool:
    return name.partition(".")[0] in FRAMEWORKS


def test_every_module_is_found_and_imported() -> None:
    """The walk covers every ``.py`` file of the package (so the checks below skip none)."""
    files = {p.resolve() for p in PACKAGE_DIR.rglob("*.py")}
    assert {m.path for m in MODULES} == files
    assert any(m.in_integrations for m in MODULES)


@pytest.mark.parametrize("module", [m for m in MODULES if m.in_integrations], ids=lambda m: m.name)
def test_integrations_import_no_store(module: Module) -> None:
    """An adapter meters through the flow, never through a store."""
    stores = sorted(name for name in imports_of(module) if _under(name, "usageflow.stores"))
    assert stores == [], f"{module.name} imports {stores}"


@pytest.mark.parametrize(
    "module", [m for m in MODULES if not m.in_integrations], ids=lambda m: m.name
)
def test_the_core_imports_no_framework_and_no_adapter(module: Module) -> None:
    """The core runs without any web framework installed and knows no adapter."""
    imported = imports_of(module)
    frameworks = sorted(name for name in imported if _framework(name))
    assert frameworks == [], f"{module.name} imports {frameworks}"
    # ``from usageflow.integrations.metered import metered`` names the function too.
    allowed = [name for importer, name in ALLOWED_CORE_IMPORTS if importer == module.name]
    adapters = sorted(
        name
        for name in imported
        if _under(name, "usageflow.integrations")
        and not any(_under(name, permitted) for permitted in allowed)
    )
    assert adapters == [], f"{module.name} imports {adapters}"


@pytest.mark.parametrize(
    "module",
    [m for m in MODULES if not m.in_integrations and not m.in_stripe_package],
    ids=lambda m: m.name,
)
def test_only_the_stripe_package_and_the_adapters_import_the_stripe_library(
    module: Module,
) -> None:
    """What Stripe touches lives in ``usageflow/stripe/`` (the web endpoints in
    ``integrations/``); the rest of the core never imports the library."""
    imported = sorted(name for name in imports_of(module) if _under(name, "stripe"))
    assert imported == [], f"{module.name} imports {imported}"


def test_the_stripe_package_imports_the_library_by_its_absolute_name() -> None:
    """Inside ``usageflow/stripe/`` the name ``stripe`` is the library: the modules that use it
    import ``stripe`` itself (a relative import would resolve to this package instead), and
    the package's own modules are named ``usageflow.stripe.*`` by the reader, never
    ``stripe``."""
    package = [m for m in MODULES if m.in_stripe_package]
    assert {m.name for m in package} >= {
        "usageflow.stripe",
        "usageflow.stripe.api",
        "usageflow.stripe.events",
        "usageflow.stripe.prices",
    }
    users = {m.name for m in package if "stripe" in imports_of(m)}
    assert users == {
        "usageflow.stripe.api",
        "usageflow.stripe._request",
        "usageflow.stripe.events",
    }
    for module in package:
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert relative == [], f"{module.name} uses a relative import"


def test_the_package_re_exports_metered_and_metered_imports_no_framework() -> None:
    """The exception, checked explicitly: ``usageflow/__init__.py`` imports
    ``usageflow.integrations.metered`` (and nothing else of the adapters), ``metered`` itself
    imports no framework, and ``from usageflow import metered`` works."""
    by_name = {m.name: m for m in MODULES}
    root = imports_of(by_name["usageflow"])
    assert {n for n in root if _under(n, "usageflow.integrations")} == {
        "usageflow.integrations.metered",
        "usageflow.integrations.metered.metered",
    }
    metered_module = by_name["usageflow.integrations.metered"]
    assert sorted(n for n in imports_of(metered_module) if _framework(n)) == []

    from usageflow import metered
    from usageflow.integrations.metered import metered as defined

    assert metered is defined
    assert "metered" in usageflow.__all__


def test_the_import_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader itself: imports in functions, under ``TYPE_CHECKING`` and relative ones are
    all seen (a check that could not see them would pass for the wrong reason)."""
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from starlette.requests import Request\n"
        "def f():\n"
        "    import flask\n"
        "    from ..stores import memory\n"
        "    from . import _http\n",
        encoding="utf-8",
    )
    found = imports_of(Module("usageflow.integrations.sample", source, False))
    assert {
        "starlette.requests",
        "flask",
        "usageflow.stores",
        "usageflow.stores.memory",
        "usageflow.integrations",
        "usageflow.integrations._http",
    } <= found


def _module_edges(module: Module, known: set[str]) -> set[str]:
    """The modules of the package ``module`` imports by name: ``from x import y`` counts as
    an import of ``x.y`` when that is a module, else of ``x``."""
    edges: set[str] = set()
    for source, imported in _import_statements(module):
        if not imported:
            edges.add(source)
        for name in imported:
            sub = f"{source}.{name}"
            edges.add(sub if sub in known else source)
    return {name for name in edges if name in known and name != module.name}


STORE_MAY_IMPORT = ("usageflow.errors", "usageflow.models", "usageflow.ops")


@pytest.mark.parametrize(
    "module", [m for m in MODULES if _under(m.name, "usageflow.stores")], ids=lambda m: m.name
)
def test_stores_import_nothing_from_the_core_but_errors_models_and_the_operations(
    module: Module,
) -> None:
    """A store knows the operations it runs (``usageflow.ops``), the values it answers with
    and the errors it raises; nothing of the core's policy."""
    known = {m.name for m in MODULES}
    beyond = sorted(
        name
        for name in _module_edges(module, known)
        if not _under(name, "usageflow.stores")
        and not any(_under(name, allowed) for allowed in STORE_MAY_IMPORT)
    )
    assert beyond == [], f"{module.name} imports {beyond}"


def test_no_module_imports_itself_back_through_a_cycle() -> None:
    """The package's import graph (every import, wherever written) has no cycle."""
    known = {m.name for m in MODULES}
    graph = {m.name: _module_edges(m, known) for m in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)
