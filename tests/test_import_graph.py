"""The package's modules import each other one way: no module reaches itself through its imports.

Every import counts: at the top, inside functions, and under
``if __name__ == "__main__":`` (a circle hidden there still makes the two
modules depend on each other). Packages' ``__init__`` files count as their
package (``sasmamba_jax.model``); ``from sasmamba_jax.data import h36m``
names the submodule.
"""

import ast
import pathlib

import sasmamba_jax

PACKAGE = pathlib.Path(sasmamba_jax.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("sasmamba_jax", *parts))


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from P import m`` of a submodule imports P.m; of any other name, P itself.
                names = {f"{node.module}.{alias.name}" for alias in node.names}
                imported |= names & modules.keys() if names <= modules.keys() else {node.module, *names}
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
    assert "sasmamba_jax.io.loader" in graph["sasmamba_jax.train.loop"]
    assert "sasmamba_jax.io.pytorch" in graph["sasmamba_jax.io.loader"]
    # Inside a function and under the main guard.
    assert "sasmamba_jax.cli.infer" in graph["sasmamba_jax.infer"]


def test_no_module_imports_itself_through_others():
    assert _cycle(_import_graph()) is None


def test_subpackages_import_each_other_one_way():
    """The layers of docs/design.md: no subpackage reaches itself through another."""
    by_package = {}
    for module, imported in _import_graph().items():
        package = ".".join(module.split(".")[:2])
        by_package.setdefault(package, set()).update(
            other for other in (".".join(m.split(".")[:2]) for m in imported) if other != package
        )
    assert "sasmamba_jax.io" in by_package["sasmamba_jax.train"]
    assert _cycle(by_package) is None


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
