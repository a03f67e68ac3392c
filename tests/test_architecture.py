"""Dependencies point one way, read statically (``ast``) from every .py file of the repository.

* the engine (``service.engine``) imports nothing of ``service`` outside itself;
* ``service`` imports neither ``api``, ``workers`` nor ``cli``; ``api`` and ``workers`` import
  neither each other nor ``cli`` (the CLI is the composition root that wires them together);
* every import of the project's own modules resolves: the module is a file here, and a name
  imported from it is bound at its top level (or is a submodule, or a lazy export of a module
  with ``__getattr__``).

Why a new bad import fails: :func:`imports` collects every ``import``/``from`` node of every file
with ``ast.walk``, so one inside a function or an ``if TYPE_CHECKING:`` block counts too. Adding
``from service.settings import Settings`` anywhere under service/engine/ yields the pair
(``service.engine.<module>``, ``service.settings``); ``service.settings`` is within the forbidden
``service`` and outside ``service.engine``, so the pair is listed and the first test fails. Likewise
``from workers.worker import Worker`` in service/ or api/. An import of a module that was moved
away (say ``service.jobs.runner``) names no file, so the second test lists it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import service.engine

ROOT = Path(__file__).resolve().parents[1]
OWN = {"api", "cli", "migrations", "service", "tests", "workers"}  # top-level packages of this repository
FORBIDDEN = {  # importer: what it must not import (other than itself)
    "service.engine": ("service",),
    "service": ("api", "workers", "cli"),
    "api": ("workers", "cli"),
    "workers": ("api", "cli"),
}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def sources() -> dict[str, Path]:
    """Every module of the repository by dotted name (packages by their ``__init__.py``)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if any(p.startswith(".") or p.endswith(".egg-info") or p in ("build", "dist") for p in parts):
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, tree: ast.AST) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import in ``tree``, relative ones resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x: relative to the module's package
                package = module.split(".") if SOURCES[module].name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name, node.lineno


def bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (through if/try/with blocks); with ``__getattr__``, its strings too."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        for field in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                pending.extend(getattr(node, field, []))
    if "__getattr__" in names:
        names.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return names


SOURCES = sources()
TREES = {module: ast.parse(path.read_text(encoding="utf-8"), str(path)) for module, path in SOURCES.items()}


def test_dependencies_point_one_way() -> None:
    wrong = [
        f"{SOURCES[module].relative_to(ROOT)}:{line} imports {target}"
        for module, tree in TREES.items()
        for target, _, line in imports(module, tree)
        for layer, banned in FORBIDDEN.items()
        if within(module, layer) and any(within(target, b) for b in banned) and not within(target, layer)
    ]
    assert not wrong, "\n".join(wrong)


def test_every_import_of_our_modules_resolves() -> None:
    names = {module: bound_names(tree) for module, tree in TREES.items()}
    dangling = []
    for module, tree in TREES.items():
        for target, name, line in imports(module, tree):
            if target.split(".")[0] not in OWN:
                continue
            namespace = (ROOT / target.replace(".", "/")).is_dir()  # e.g. migrations/versions
            if target not in SOURCES and not namespace:
                dangling.append(f"{SOURCES[module].relative_to(ROOT)}:{line}: no module {target}")
            elif name not in (None, "*") and f"{target}.{name}" not in SOURCES and name not in names.get(target, ()):
                dangling.append(f"{SOURCES[module].relative_to(ROOT)}:{line}: {target} has no {name}")
    assert not dangling, "\n".join(dangling)


def test_the_engine_exports_its_public_names() -> None:
    assert service.engine.__all__
    missing = [name for name in service.engine.__all__ if getattr(service.engine, name, None) is None]
    assert not missing, missing


def test_the_gateway_imports_no_torch() -> None:
    code = "import sys, api.app, service.engine; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
