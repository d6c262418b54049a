"""The package layout's rules, read from the source with ``ast`` (nothing is imported).

- ``probes`` never imports ``diagnose``;
- no private name (``_x``) is imported from another module, and a private
  module (``pkg._mod``) is imported only from inside its own package;
- no import cycles, between ``diagnose``'s subpackages or between modules;
- the subpackages depend one way, along the data flow;
- every name a module exports in ``__all__`` is exported by its package;
- no module is longer than about 400 lines;
- no function's body (its docstring aside) is longer than a screen, 60 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("probes", "diagnose")
MAX_BODY = 60

# Which subpackage of diagnose may import which: load -> capture -> measure -> train ->
# decide -> results -> render. ``core`` is the shared floor; ``report`` reads results only.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "models": {"core", "data"},
    "measure": {"core", "data", "models"},
    "training": {"core", "data", "models", "measure"},
    "decide": {"core", "data", "models", "measure", "training"},
    "report": {"core"},
    "workflows": {"core", "data", "models", "measure", "training", "decide", "report"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str, top_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every absolute import of ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
    return out


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def _package_of(name: str) -> str:
    return name if _is_package(name) else name.rsplit(".", 1)[0]


def _targets(module: str, names: list[str]) -> list[str]:
    """The modules of ours that an import statement loads (a submodule import counts)."""
    out = [module] if module in MODULES else []
    out += [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return out


def test_probes_never_imports_diagnose():
    bad = [
        f"{name}:{line}"
        for name in MODULES
        if name.startswith("probes")
        for module, _, line in _imports(name)
        if module.split(".")[0] == "diagnose"
    ]
    assert not bad, f"probes imports diagnose at {bad}"


def test_no_private_name_crosses_a_module():
    bad = []
    for name in MODULES:
        for module, names, line in _imports(name):
            if not _ours(module):
                continue
            bad += [f"{name}:{line} imports {n} from {module}" for n in names if n.startswith("_")]
            private = [i for i, p in enumerate(module.split(".")) if p.startswith("_")]
            if private:
                owner = ".".join(module.split(".")[: private[0]])
                if not (name == owner or name.startswith(owner + ".")):
                    bad.append(f"{name}:{line} imports the private module {module}")
    assert not bad, "\n".join(bad)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    # Top-level imports only: an import inside a function runs later, on call.
    graph = {
        name: {
            t
            for module, names, _ in _imports(name, top_level_only=True)
            for t in _targets(module, names)
            if t != name and not name.startswith(t + ".")  # a package's own parents
        }
        for name in MODULES
    }
    # A package importing its own submodules (its __init__) is how it exports them.
    for name in graph:
        if _is_package(name):
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"


def test_subpackages_depend_one_way_along_the_data_flow():
    bad = []
    for name in MODULES:
        parts = name.split(".")
        if parts[0] != "diagnose" or len(parts) < 3 and not _is_package(name):
            continue
        if len(parts) < 2 or parts[1] not in ALLOWED:
            continue
        own = parts[1]
        for module, _, line in _imports(name):
            theirs = module.split(".")
            if theirs[0] == "diagnose" and len(theirs) > 1 and theirs[1] != own:
                if theirs[1] not in ALLOWED[own]:
                    bad.append(f"{name}:{line} ({own}) imports {module}")
    assert not bad, "\n".join(bad)


def test_top_level_of_diagnose_is_only_the_api_and_the_cli():
    flat = sorted(p.name for p in (ROOT / "diagnose").glob("*.py"))
    assert flat == ["__init__.py", "cli.py", "cli_parser.py"]
    assert sorted(
        p.name for p in (ROOT / "diagnose").iterdir() if p.is_dir() and p.name != "__pycache__"
    ) == sorted(ALLOWED)


def _declared_all(name: str) -> list[str] | None:
    for node in ast.parse(MODULES[name].read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]
    return None


@pytest.mark.parametrize("name", [m for m in MODULES if not _is_package(m)])
def test_module_exports_are_exported_by_its_package(name):
    if name.rsplit(".", 1)[-1].startswith("_") or name in ("diagnose.cli", "diagnose.cli_parser"):
        return  # a private module's names reach users only through its package, if at all
    exported = _declared_all(name)
    assert exported is not None, f"{name} declares no __all__"
    package = _declared_all(_package_of(name)) or []
    missing = sorted(set(exported) - set(package))
    assert not missing, f"{name} exports {missing}, which {_package_of(name)} does not"


def test_functions_stay_simple():
    # Size and complexity of functions are ruff's rules (C901, PLR0915, their limits in
    # pyproject.toml); modules are split by concept, not by line count.
    pytest.importorskip("ruff")
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "C901,PLR0915", "probes", "diagnose"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of ``fn``'s body from its first statement after the docstring to its end."""
    body = fn.body
    doc = isinstance(body[0], ast.Expr) and isinstance(
        getattr(body[0], "value", None), ast.Constant
    )
    start = body[1].lineno if doc and len(body) > 1 else body[0].lineno
    return fn.end_lineno - start + 1


@pytest.mark.parametrize("name", list(MODULES))
def test_functions_fit_on_a_screen(name):
    tree = ast.parse(MODULES[name].read_text())
    long = [
        f"{node.name} ({_body_lines(node)} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and _body_lines(node) > MAX_BODY
    ]
    assert not long, f"{MODULES[name]}: {', '.join(long)} over {MAX_BODY} lines: split by step"
