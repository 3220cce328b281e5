"""The package's layout shows its data flow (STYLE.md): no import cycle, counting the imports inside
functions and under ``TYPE_CHECKING``; the capture types, the model, the importers, the index, the
testing helpers and the analyses (metrics, Welch, TDoA) never import a protocol module.

Read from the source with :mod:`ast`, nothing imported: an edge ``a -> b`` is any ``import`` or
``from ... import`` in module ``a`` (at any depth) that names module ``b``, relative imports
resolved; ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``.
The implicit import of a parent package is not an edge (a package's ``__init__`` re-exporting its
submodules is no cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sdrlab

PACKAGE = Path(sdrlab.__file__).parent
#: protocol modules: what speaks to a receiver (real or simulated)
PROTOCOLS = ("sdrlab.receivers", "sdrlab.sim")
#: what must never import a protocol module: the capture types (the neutral module protocols and
#: importers share), the data model, the importers, the index, the testing helpers users' tests
#: import, and the analyses of stored data (issue 15: they see only protocol-neutral modules)
PROTOCOL_FREE = ("sdrlab.capture", "sdrlab.model", "sdrlab.index", "sdrlab.interchange", "sdrlab.testing",
                 "sdrlab.metrics", "sdrlab.welch", "sdrlab.tdoa")


def module_names(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def imports_of(source: str, name: str, is_pkg: bool, modules: set[str] | dict[str, object]) -> set[str]:
    """The modules of ``modules`` that the module ``name`` imports, anywhere in its source."""
    here = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                if not base:
                    raise ValueError(f"{name}: a relative import goes above the package")
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE, package: str = "sdrlab") -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(path.read_text(encoding="utf-8"), name, is_pkg, modules)
            for name, (path, is_pkg) in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan,
    iterative), each starting from its smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in graph.get(v, ()):
                    components.append(comp)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest path from the component's smallest member back to itself (breadth first)."""
    first = min(comp)
    parent: dict[str, str] = {}
    queue = [first]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, set()) & comp):
            if w == first:
                path = [v]
                while path[-1] != first:
                    path.append(parent[path[-1]])
                return [first, *reversed(path[:-1]), first]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


def wrong_way(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    def under(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return {(a, b) for a, deps in graph.items() if under(a, PROTOCOL_FREE) for b in deps if under(b, PROTOCOLS)}


# ---- the finder itself can fail ---------------------------------------------------------------
@pytest.mark.parametrize("graph, cycles", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "x": {"y"}, "y": {"x"}}, [["a", "b", "c", "a"], ["x", "y", "x"]]),
    ({"a": {"a"}}, [["a", "a"]]),
    ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, []),  # a diamond is no cycle
])
def test_cycle_finder_on_small_graphs(graph, cycles):
    assert sorted(find_cycles(graph)) == cycles


def test_imports_are_read_at_every_depth_and_resolved(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\nimport pkg.sub\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a", "pkg.sub"}}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


# ---- the package ------------------------------------------------------------------------------
def test_the_package_graph_is_read():
    graph = import_graph()
    assert "sdrlab.config" in graph["sdrlab.cli"]  # a function-level import
    assert "sdrlab.errors" in graph["sdrlab.stations"]
    assert len(graph) > 50


def test_no_import_cycle_in_the_package():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (counting imports inside functions):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_model_importers_index_testing_and_analyses_import_no_protocol_module():
    """Capture types and the frame record live in sdrlab.capture, which protocols and importers
    both import; nothing of the model, the importers, the index, the testing helpers or the
    analyses may reach a protocol module."""
    found = sorted(wrong_way(import_graph()))
    assert not found, "protocol modules imported by a protocol-free module:\n" + "\n".join(
        f"{a} -> {b}" for a, b in found)


def test_wrong_way_finder_sees_an_import_of_a_protocol_module():
    graph = {"sdrlab.model": {"sdrlab.capture"}, "sdrlab.interchange.sigmf": {"sdrlab.receivers.kiwiwire"},
             "sdrlab.index.schema": {"sdrlab.sim"}, "sdrlab.acquire": {"sdrlab.receivers"},
             "sdrlab.testing.session": {"sdrlab.receivers.kiwisdr"}, "sdrlab.index.stations": {"sdrlab.receivers"},
             "sdrlab.tdoa.timebase": {"sdrlab.receivers.kiwiwire", "sdrlab.capture"}}
    assert wrong_way(graph) == {("sdrlab.interchange.sigmf", "sdrlab.receivers.kiwiwire"),
                                ("sdrlab.index.schema", "sdrlab.sim"),
                                ("sdrlab.testing.session", "sdrlab.receivers.kiwisdr"),
                                ("sdrlab.index.stations", "sdrlab.receivers"),
                                ("sdrlab.tdoa.timebase", "sdrlab.receivers.kiwiwire")}


def test_an_added_protocol_import_in_the_package_is_found(tmp_path):
    """The rule on a real tree: a function-level import of a protocol module in a testing helper."""
    pkg = tmp_path / "sdrlab"
    for sub in ("receivers", "testing", "index"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "capture.py").write_text("X = 1\n")
    (pkg / "receivers" / "kiwiwire.py").write_text("from ..capture import X\n")
    (pkg / "index" / "stations.py").write_text("from ..capture import X\n")
    (pkg / "testing" / "session.py").write_text("def f():\n    from ..receivers.kiwiwire import X\n    return X\n")
    assert wrong_way(import_graph(pkg, "sdrlab")) == {("sdrlab.testing.session", "sdrlab.receivers.kiwiwire")}


#: values that have one home, sdrlab/constants.py (issue 14: each was defined in up to five places)
ONE_HOME = {299_792_458.0: "C_M_S", 1_000_000_000: "NS", 32768.0: "FULL_SCALE"}


def constants_defined(root: Path = PACKAGE) -> list[str]:
    """``module:line NAME = value`` for every module-level assignment of a ONE_HOME value."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant):
                v = node.value.value
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v in ONE_HOME:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def test_each_constant_has_one_home(tmp_path):
    assert constants_defined() == [f"sdrlab/constants.py:{n}" for n in _lines_of_constants()]
    # the finder sees a second definition
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("C = 299_792_458.0\nx = 3\n")
    assert constants_defined(tmp_path / "pkg") == ["pkg/m.py:1"]


def _lines_of_constants() -> list[int]:
    tree = ast.parse((PACKAGE / "constants.py").read_text(encoding="utf-8"))
    return [n.lineno for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and n.value.value in ONE_HOME]
