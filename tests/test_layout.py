"""The package's shape: readable module sizes, no import circle, a public API type checkers see."""

from __future__ import annotations

import ast
from pathlib import Path

import mpinfer

PACKAGE = Path(mpinfer.__file__).parent
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, those imported only for type checking too."""
    name = _module_name(path)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            # "from . import lanes" imports the module lanes; "from . import __doc__" the package
            # itself.
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
    found &= modules
    found.discard(name)
    return found


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` as the path round it, or None (a depth-first search)."""
    state: dict[str, int] = {}  # 1 while on the current path, 2 when done
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return [*path[path.index(step):], step]
            elif step not in state:
                state[step] = 1
                path.append(step)
                stack.append(iter(sorted(graph[step])))
    return None


def test_no_module_in_the_package_is_longer_than_600_lines() -> None:
    # Given every module of the package
    # When their lines are counted
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    # Then none is over the limit (split such a module by job)
    assert long == {}


def test_no_two_modules_of_the_package_import_each_other_even_through_others() -> None:
    # Given the imports between the package's modules, type-checking ones included
    paths = list(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    graph = {_module_name(path): _imports(path, modules) for path in paths}
    assert graph["mpinfer.lifecycle"], "the import graph is empty: the parser above is broken"
    # When a circle is looked for
    # Then there is none
    assert _circle(graph) is None


def test_the_circle_finder_finds_a_circle_through_three_modules() -> None:
    # Given a graph where a imports b, b imports c and c imports a
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    # When a circle is looked for, Then it is found
    assert _circle(graph) == ["a", "b", "c", "a"]


def test_every_public_name_loads_and_is_re_exported_for_type_checkers() -> None:
    # Given the names the package loads on first use, and its type-checking imports
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {alias.asname for node in ast.walk(tree) if isinstance(node, ast.If)
             for child in node.body if isinstance(child, ast.ImportFrom)
             for alias in child.names if alias.asname == alias.name}
    # When they are compared and each public name is read
    # Then every lazily loaded name is re-exported for type checkers ("X as X"), and each one loads
    assert typed == set(mpinfer._EXPORTS)
    for name in mpinfer.__all__:
        assert getattr(mpinfer, name) is not None, name


def _folders() -> dict[str, bool]:
    """Each folder of the package (a subpackage) and whether its ``__init__`` sets ``__all__``."""
    found = {}
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text(), str(init))
        found[_module_name(init)] = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            for node in tree.body)
    return found


def test_a_folder_with_an_all_is_reached_from_outside_only_through_its_init() -> None:
    # Given the folders whose __init__ names what the rest may use (an __all__), and the imports of
    # every module of the package
    facades = sorted(name for name, has_all in _folders().items() if has_all)
    assert facades == ["mpinfer.inputs", "mpinfer.limits"], "docs/development.md names these"
    paths = list(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    graph = {_module_name(path): _imports(path, modules) for path in paths}
    for facade in facades:
        outside = {name: imported for name, imported in graph.items()
                   if name != facade and not name.startswith(facade + ".")}
        assert any(facade in imported for imported in outside.values()), (
            f"nothing imports {facade}: the parser is broken")
        # When the modules outside it that reach into its modules are picked out
        reaching = {name: sorted(i for i in imported if i.startswith(facade + "."))
                    for name, imported in outside.items()}
        # Then there are none
        assert {name: found for name, found in reaching.items() if found} == {}, facade


def test_a_folder_without_an_all_is_no_facade_its_init_imports_nothing() -> None:
    # Given the folders whose __init__ sets no __all__ (the rest imports their modules)
    plain = sorted(name for name, has_all in _folders().items() if not has_all)
    assert "mpinfer.api" in plain and "mpinfer.store" in plain
    # When their __init__ modules' imports are read
    importing = {name: sorted(ast.unparse(node) for node in
                              ast.parse((PACKAGE.parent / name.replace(".", "/") /
                                         "__init__.py").read_text()).body
                              if isinstance(node, (ast.Import, ast.ImportFrom)))
                 for name in plain}
    # Then none imports anything: no half facade that some import and others go around
    assert {name: found for name, found in importing.items() if found} == {}
