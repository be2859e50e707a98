"""The package's shape stays as designed: no import cycle, private modules stay home, short
functions, and docs/architecture.md names every module.

The import graph is read from the source with ``ast`` (nothing is imported), so a cycle is
found even when one side imports lazily inside a function: a lazy import hides a cycle at
import time but still ties the two modules together. Imports under ``if TYPE_CHECKING:``
are not edges (they never run).

Private modules: a module whose own name starts with ``_`` (``pellucid/attribution/_coalitions.py``)
belongs to its package. It may be imported by the modules of that package and of the
package's subpackages (``pellucid.attribution.rules.*`` may import
``pellucid.attribution._coalitions``), never from a sibling package (``pellucid.metrics`` may
not). The top-level package is everything, so for top-level private modules
(``pellucid._x``) that rule says nothing: those imported from a subpackage must be listed in
``SHARED_PRIVATE`` with the reason they are shared.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "pellucid"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_FUNCTION_LINES = 80

# Top-level private modules that the whole package uses, and why they are shared.
SHARED_PRIVATE = {
    "pellucid._validation": "the check_* helpers every public boundary calls",
    "pellucid._state": "the model-state guard every method runs inside",
    "pellucid._targets": "THE place that turns `target` + model output into scores",
    "pellucid._evaluate": "THE model evaluator: prepare, Forward, chunking, gradient engine",
    "pellucid._shell": "the method shell every public attribution method runs in",
    "pellucid._kernels": "the layout policy the evaluator applies (channels-last pool op too)",
    "pellucid._registry": "the method registry every attribution method registers in",
    "pellucid._io": "atomic writes and safe reads for every file pellucid writes",
    "pellucid._warnings": "the PellucidWarning hierarchy",
    "pellucid._deprecation": "the one decorator behind every renamed keyword's alias",
    "pellucid._adapt": "the one boundary adapter for estimators, arrays and DataFrames",
    "pellucid._random": "per-example random streams every stochastic method draws from",
}

# Cross-package imports of private modules still being untangled, each with its owner.
# The list only shrinks: an entry that is no longer needed fails the test.
PENDING_PRIVATE: dict[tuple[str, str], str] = {}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: dict[str, int] = field(default_factory=dict)  # imported module -> first line
    at_import: set[str] = field(default_factory=set)  # imported outside any function body

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _modules() -> dict[str, Module]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = Module(".".join(parts), path, is_package)
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return skipped


def _imported_names(node: ast.Import | ast.ImportFrom, module: Module) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.package.split(".")[: len(module.package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _graph() -> dict[str, Module]:
    modules = _modules()
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        lazy = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = _imported_names(node, module)
            # ``from pkg import sub`` imports the submodule; ``from pkg.mod import name`` the module
            targets = [n for n in names[:-1] if n in modules] or names[-1:]
            for target in targets:
                if target in modules and target != module.name:
                    module.imports.setdefault(target, node.lineno)
                    if id(node) not in lazy:
                        module.at_import.add(target)
    return modules


GRAPH = _graph()


def _cycles(graph: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for other in graph[name].imports:
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in on_stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == name:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return components


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _may_import(importer: Module, target: str) -> bool:
    """Whether ``importer`` may import ``target``: every private name on the way must allow it.

    For each private part ``_x`` of ``target`` (``pellucid.a._x`` or ``pellucid.a._x._y``):
    modules inside ``_x`` itself may import it; so may the modules of the package that holds
    ``_x`` and of its subpackages, except at the top level, where only top-level modules may,
    unless ``_x`` is listed in SHARED_PRIVATE.
    """
    parts = target.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if not part.startswith("_") or part.startswith("__"):
            continue
        owner, private = ".".join(parts[:i]), ".".join(parts[: i + 1])
        if _within(importer.name, private):
            continue
        if owner == "pellucid":
            allowed = importer.package == "pellucid" or private in SHARED_PRIVATE
        else:
            allowed = _within(importer.package, owner)
        if not allowed:
            return False
    return True


def _private_crossings(graph: dict[str, Module]) -> dict[tuple[str, str], int]:
    return {
        (module.name, target): line
        for module in graph.values()
        for target, line in module.imports.items()
        if not _may_import(module, target)
    }


def test_the_graph_sees_the_package():
    # guards the parser itself: known edges must be found, lazy ones included
    assert "pellucid._validation" in GRAPH["pellucid.training"].imports
    assert "pellucid.study.stages" in GRAPH["pellucid.study.config"].imports  # lazy import
    assert "pellucid.study.stages" not in GRAPH["pellucid.study.config"].at_import
    assert "pellucid.plot.gradients" in GRAPH["pellucid.monitoring.monitor"].imports
    assert "pellucid.monitoring.monitor" in GRAPH["pellucid.monitoring"].imports
    assert _cycles({"a": Module("a", SRC, False, {"b": 1}), "b": Module("b", SRC, False, {"a": 1})})


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    detail = [
        " -> ".join(f"{name} (imports {sorted(set(GRAPH[name].imports) & set(c))})" for name in c)
        for c in cycles
    ]
    assert not cycles, "import cycles among pellucid modules:\n" + "\n".join(detail)


def test_private_modules_stay_in_their_package():
    crossings = _private_crossings(GRAPH)
    new = {k: v for k, v in crossings.items() if k not in PENDING_PRIVATE}
    report = [
        f"{GRAPH[a].path.relative_to(ROOT)}:{line} imports {b}" for (a, b), line in new.items()
    ]
    assert not new, (
        "private modules imported from another package (make the helper public in its "
        "package, move it, or for a top-level pellucid._x list it in SHARED_PRIVATE):\n"
        + "\n".join(report)
    )
    stale = sorted(set(PENDING_PRIVATE) - set(crossings))
    assert not stale, f"PENDING_PRIVATE entries no longer needed, delete them: {stale}"


def test_shared_private_modules_exist():
    missing = sorted(set(SHARED_PRIVATE) - set(GRAPH))
    assert not missing, f"SHARED_PRIVATE names modules that do not exist: {missing}"


def test_private_rule_examples():
    def mod(name: str, imports: dict[str, int] | None = None, package: bool = False) -> Module:
        return Module(name, SRC, package, imports or {})

    graph = {
        m.name: m
        for m in [
            mod("pellucid._v"),
            mod("pellucid.a", package=True),
            mod("pellucid.a._c"),
            mod("pellucid.a.x", {"pellucid.a._c": 1}),
            mod("pellucid.a.r.y", {"pellucid.a._c": 2}),
            mod("pellucid.b.z", {"pellucid.a._c": 3, "pellucid._v": 4}),
            mod("pellucid.t", {"pellucid._v": 5, "pellucid._p._q": 6}),
            mod("pellucid._p", {"pellucid._p._q": 7}, package=True),
            mod("pellucid._p._q", {"pellucid._p._r": 8, "pellucid._v": 9}),
            mod("pellucid.validation", {"pellucid._validation": 10}),
        ]
    }
    assert set(_private_crossings(graph)) == {
        ("pellucid.b.z", "pellucid.a._c"),  # a sibling package's private module
        ("pellucid.b.z", "pellucid._v"),  # a top-level private module, not in SHARED_PRIVATE
        ("pellucid.t", "pellucid._p._q"),  # inside a private package: only through it
        ("pellucid._p._q", "pellucid._v"),  # a private package is not the top level
    }


# Rooms that draw or orchestrate; the computing rooms must not import them at import time.
DRAWING_AND_ORCHESTRATION = ("plot", "report", "study", "cli", "explorer")


def _room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_computing_rooms_do_not_import_drawing_or_orchestration_at_import_time():
    bad = []
    for module in GRAPH.values():
        room = _room(module.name)
        for target in module.imports:
            other = _room(target)
            if other == room or other not in DRAWING_AND_ORCHESTRATION:
                continue
            if room not in DRAWING_AND_ORCHESTRATION and target in module.at_import:
                bad.append(f"{module.name} imports {target} at import time")
            elif other == "cli" or (other == "study" and room != "cli"):
                bad.append(f"{module.name} imports {target}")
    assert not bad, "arrows against the data flow (see docs/architecture.md):\n" + "\n".join(bad)


def _documented_paths(text: str) -> set[str]:
    """The first cell of every table row: a module path relative to src/pellucid/."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))


def test_architecture_names_every_module():
    named = _documented_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    modules = sorted(str(m.path.relative_to(SRC)) for m in GRAPH.values())
    missing = [m for m in modules if m not in named]
    assert not missing, (
        "docs/architecture.md must name every module under src/pellucid/ (one table row "
        "each, path relative to src/pellucid/, in backticks); missing:\n" + "\n".join(missing)
    )
    stale = sorted(p for p in named if not (SRC / p).exists())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def _function_lengths(path: Path) -> list[tuple[int, str, int]]:
    """(lines, qualified name, first line) of every function; the docstring does not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = child.end_lineno - child.lineno + 1  # type: ignore[operator]
                body = child.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    lines -= body[0].end_lineno - body[0].lineno + 1  # type: ignore[operator]
                found.append((lines, prefix + child.name, child.lineno))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return found


# Functions still over the limit, each with the helper whose area it is in; it only shrinks.
LONG_FUNCTIONS: dict[str, str] = {}


def test_no_function_over_80_lines():
    long = {}
    for module in GRAPH.values():
        for lines, name, line in _function_lengths(module.path):
            if lines > MAX_FUNCTION_LINES:
                key = f"{module.path.relative_to(SRC)}::{name}"
                long[key] = f"{module.path.relative_to(ROOT)}:{line} {name}: {lines} lines"
    new = sorted(v for k, v in long.items() if k not in LONG_FUNCTIONS)
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (docstring excluded):\n" + (
        "\n".join(new)
    )
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not stale, f"LONG_FUNCTIONS entries now short enough, delete them: {stale}"


# ------------------------------------------------------------------ Raises: sections
_CHECK_CALL = re.compile(r"^_?(check|validate)(_|$)")


def _raises(function: ast.FunctionDef) -> list[int]:
    """Lines where ``function`` itself raises: a ``raise`` with an exception, or a call of a
    ``check_*``/``validate*`` helper (nested functions and classes are their own)."""
    found: list[int] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
            ):
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                found.append(child.lineno)
            elif isinstance(child, ast.Call):
                func = child.func
                name = getattr(func, "id", None) or getattr(func, "attr", "")
                if _CHECK_CALL.match(name):
                    found.append(child.lineno)
            visit(child)

    visit(function)
    return found


def _public_api() -> dict[tuple[str, str], None]:
    """(defining module, name) of every name in the ``__all__`` of a public module (no
    ``_private`` part in its path), following ``from pellucid.x import name`` re-exports."""
    trees = {name: ast.parse(m.path.read_text(encoding="utf-8")) for name, m in GRAPH.items()}

    def exported(tree: ast.Module) -> list[str]:
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                return list(ast.literal_eval(node.value))
        return []

    def origin(module: str, name: str, depth: int = 0) -> tuple[str, str]:
        for node in trees[module].body:
            if isinstance(node, ast.ImportFrom) and node.module in trees and depth < 8:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        return origin(node.module, alias.name, depth + 1)
        return module, name

    api: dict[tuple[str, str], None] = {}
    for module, tree in trees.items():
        if any(p.startswith("_") for p in module.split(".")):
            continue
        for name in exported(tree):
            api[origin(module, name)] = None
    return api


def _documented_raises(tree: ast.Module, name: str) -> list[str]:
    """``qualified name: lines`` for the functions (and public methods) named ``name`` in
    ``tree`` that raise but whose docstring has no ``Raises:`` section (a constructor's
    belongs to its class docstring)."""
    missing = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.ClassDef) or node.name != name:
            continue
        functions = [(node.name, node, node)] if isinstance(node, ast.FunctionDef) else []
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and (
                    not item.name.startswith("_") or item.name == "__init__"
                ):
                    documented = node if item.name == "__init__" else item
                    functions.append((f"{node.name}.{item.name}", item, documented))
        for qualified, function, documented in functions:
            lines = _raises(function)
            if lines and "Raises:" not in (ast.get_docstring(documented) or ""):
                missing.append(f"{qualified} (raises at lines {lines})")
    return missing


def test_public_functions_that_raise_say_so():
    trees = {name: ast.parse(m.path.read_text(encoding="utf-8")) for name, m in GRAPH.items()}
    missing = []
    for module, name in _public_api():
        for item in _documented_raises(trees[module], name):
            missing.append(f"{GRAPH[module].path.relative_to(ROOT)}: {item}")
    assert not missing, (
        "public functions that raise must say so in a `Raises:` section of their docstring "
        "(Google style; a constructor's in the class docstring):\n" + "\n".join(sorted(missing))
    )


def test_raises_rule_examples():
    tree = ast.parse(
        "def a(x):\n    '''Doc.'''\n    raise ValueError(x)\n"
        "def b(x):\n    '''Doc.\n\n    Raises:\n        ValueError: bad.\n    '''\n    raise ValueError\n"
        "def c(x):\n    '''Doc.'''\n    check_int('x', x)\n"
        "def d(x):\n    '''Doc.'''\n    def inner():\n        raise ValueError\n    return inner\n"
        "class E:\n    '''Doc.'''\n    def __init__(self, x):\n        raise TypeError\n"
        "    def _private(self):\n        raise TypeError\n"
    )
    assert _documented_raises(tree, "a") == ["a (raises at lines [3])"]
    assert _documented_raises(tree, "b") == []
    assert _documented_raises(tree, "c") == ["c (raises at lines [13])"]
    assert _documented_raises(tree, "d") == []
    assert _documented_raises(tree, "E") == ["E.__init__ (raises at lines [22])"]
