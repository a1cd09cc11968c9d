"""The package's modules import each other one way: no module reaches itself through its imports.

Function-level imports count too: a circle hidden inside a function still
makes the two modules depend on each other. Imports under
``if __name__ == "__main__":`` do not: they run only when the file is run as a
script, as a module of its own. Packages' ``__init__`` files are left out
(``from sasmamba_jax.data import h36m`` names the submodule).
"""

import ast
import pathlib

import sasmamba_jax

PACKAGE = pathlib.Path(sasmamba_jax.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    return ".".join(("sasmamba_jax", *path.relative_to(PACKAGE).with_suffix("").parts))


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"'


def _library_nodes(tree: ast.Module):
    """Every node of the module except those under its main guard."""
    for statement in tree.body:
        if not _is_main_guard(statement):
            yield from ast.walk(statement)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in _library_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            found = visit(imported)
            if found:
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module)
        if found:
            return found
    return None


def test_the_graph_sees_the_loaders_imports():
    graph = _import_graph()
    assert "sasmamba_jax.checkpoint" in graph["sasmamba_jax.train_lib"]
    assert "sasmamba_jax.convert" in graph["sasmamba_jax.checkpoint"]


def test_no_module_imports_itself_through_others():
    assert _cycle(_import_graph()) is None


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
