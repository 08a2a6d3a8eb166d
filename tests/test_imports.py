"""No import cycle between library modules: every import statement of every module (function-level ones
included, ``if TYPE_CHECKING:`` blocks excluded: they never run) is read with ``ast`` and resolved to the
module that defines the imported name; the graph must have no cycle."""
import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import ROOT

# installed package name -> folder (pyproject.toml's package-dir)
PACKAGES = {"transferlab": "transferlab", "transferlab.features": "features", "transferlab.classifiers": "classifiers",
            "transferlab.finetuning": "finetuning", "transferlab.pipeline": "pipeline"}


def library_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every library module (package ``__init__`` files as the package)."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted((root / folder).glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom that runs (anywhere in the module, functions included)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _lazy_table(package: str) -> dict:
    """A lazy package's public name -> module table (``_API``, see transferlab.util.lazy_names), absolute."""
    api = getattr(importlib.import_module(package), "_API", None) or {}
    return {name: (package + mod if mod.startswith(".") else mod) for name, mod in api.items()}


def _defining_module(package: str, name: str, modules: dict, seen=()) -> str:
    """The library module that ``from package import name`` depends on."""
    if f"{package}.{name}" in modules:
        return f"{package}.{name}"
    if (package, name) not in seen:  # an __init__ re-exporting a name: follow its own from-import
        for node in ast.parse(modules[package].read_text()).body:
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                source = _absolute(package, node, True)
                alias = next(a.name for a in node.names if (a.asname or a.name) == name)
                if source in PACKAGES and source != package:
                    return _defining_module(source, alias, modules, seen + ((package, name),))
                return source
    return _lazy_table(package).get(name, package)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the library modules its import statements load."""
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                source = _absolute(module, node, path.stem == "__init__")
                if source in PACKAGES:
                    targets = [_defining_module(source, a.name, modules) for a in node.names]
                else:
                    targets = [source]
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "pipeline").mkdir()
    for folder in set(PACKAGES.values()) - {"pipeline"}:
        (tmp_path / folder).mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (tmp_path / "pipeline" / "b.py").write_text("def g():\n    from transferlab.pipeline.a import f\n    return f\n")
    (tmp_path / "pipeline" / "c.py").write_text("from . import a\n")
    graph = import_graph(library_modules(tmp_path))
    assert graph["transferlab.pipeline.c"] == {"transferlab.pipeline.a"}
    assert cycles(graph) == [["transferlab.pipeline.a", "transferlab.pipeline.b"]]


def test_names_of_a_lazy_package_resolve_to_their_defining_module():
    graph = import_graph(library_modules())
    # sweep.py: `from transferlab.features import ExtractionSpec, load_dataset, parse_pooling`
    assert {"transferlab.features.spec", "transferlab.features.data", "transferlab.features.pooling"} \
        <= graph["transferlab.pipeline.sweep"]
    assert "transferlab.features" not in graph["transferlab.pipeline.sweep"]




@pytest.mark.parametrize("package", list(PACKAGES))
def test_no_import_cycle_between_modules(package):
    graph = import_graph(library_modules())
    found = [c for c in cycles(graph) if any(m == package or m.rpartition(".")[0] == package for m in c)]
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)
