"""No import cycle between refseg's modules.

Every ``import`` / ``from ... import`` in every module of the package is read with ``ast`` (at module
level and inside functions and classes; relative imports resolved; blocks under
``if TYPE_CHECKING:`` skipped, they never run). ``from a.b import c`` is an edge to the module
``a.b.c`` when that exists, else to ``a.b``. Importing ``a.b.c`` also runs ``a/__init__`` and
``a/b/__init__``, but that is no edge: a package's ``__init__`` runs before its submodules, so it only
closes a cycle when a module imports names from the package itself, and that is an edge here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "refseg"


def package_modules(package_dir: Path) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the package (``__init__`` names the package)."""
    root = package_dir.parent
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Import nodes anywhere below ``node``, except in the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield from _import_nodes(ast.Module(body=[sub], type_ignores=[]))
            continue
        yield from _import_nodes(child)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest dotted prefix of ``name`` that is a module of the package."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in modules:
            return candidate
    return None


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports (anywhere in its file)."""
    path = modules[name]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        for t in targets:
            known = _known(t, modules)
            if known is not None and known != name:
                out.add(known)
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = package_modules(package_dir)
    return {name: imports_of(name, modules) for name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, sorted for stable output)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_refseg_has_no_import_cycle():
    graph = import_graph(PACKAGE_DIR)
    assert "refseg.data.sources.hf" in graph and "refseg.data.refshapes.writer" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_data_modules_import_no_model_training_or_cli_code():
    """The data package stands below models, engine and the command line (the synthetic datasets' own
    CLIs aside)."""
    graph = import_graph(PACKAGE_DIR)
    upper = ("refseg.models", "refseg.engine", "refseg.predictor", "refseg.config")
    for name, deps in graph.items():
        if name.startswith("refseg.data"):
            bad = sorted(d for d in deps if d.startswith(upper))
            assert not bad, f"{name} imports {bad}"
            if name not in ("refseg.data.check", "refseg.data.refshapes.cli", "refseg.data.refshapes.__main__",
                            "refseg.data.grefshapes.cli", "refseg.data.grefshapes.__main__"):
                assert "refseg.cli" not in deps, f"{name} imports refseg.cli"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "import os\n\ndef f():\n    from .sub import b\n    return b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n"
                        "else:\n    import json\n\nclass C:\n    def g(self):\n        from .. import a\n",
    })
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize("text,edge", [
    ("import pkg.sub.b as x\n", "pkg.sub.b"),
    ("from pkg.sub import b\n", "pkg.sub.b"),
    ("from pkg.sub import nothing_module\n", "pkg.sub"),
    ("from ..sub.b import name\n", "pkg.sub.b"),
])
def test_the_walker_resolves_import_forms(tmp_path, text, edge):
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/sub/__init__.py": "", "pkg/sub/b.py": "",
                            "pkg/other/__init__.py": "", "pkg/other/c.py": text})
    assert import_graph(pkg)["pkg.other.c"] == {edge}


def test_no_module_imports_another_modules_private_names():
    """What a module shares is public: ``from .x import _name`` between refseg's modules is refused."""
    modules = package_modules(PACKAGE_DIR)
    found = []
    for name, path in modules.items():
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("refseg")):
                found += [f"{name}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
    assert not found, found
