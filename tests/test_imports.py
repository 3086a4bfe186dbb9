"""The import graph of the package: no module imports itself back through others (lazy imports inside functions
count too, since they hide a cycle rather than remove it), and `data` leans on two leaf modules of `model` only:
its errors and the one place that reaches into Lightning's internals."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "data")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules `path` imports anywhere in it: `from a.b import c` is a.b.c where that is a module,
    else a.b; relative imports are resolved against `name`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those are imports too, except the packages `name`
    # itself lives in (which are already running when it is imported)
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    out |= {".".join(m.split(".")[:i]) for m in set(out) for i in range(1, m.count(".") + 1)} - own
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(path, name, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_imports_it_checks():
    edges = graph()
    assert "model.errors" in edges["model.writes"]
    assert "model.sampling.samplers" in edges["model.sampling.loop"]
    assert "model.denoiser" in edges["model.config"]  # through model.denoiser.config, a module of that package
    assert "model.sampling" not in edges["model.sampling.loop"]  # its own package
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_module_imports_itself_back():
    assert cycles(graph()) == []


def test_data_uses_only_leaf_modules_of_model():
    edges = graph()
    used = {m for name, deps in edges.items() if name.startswith("data") for m in deps if m.startswith("model")}
    assert used == {"model", "model.errors", "model.compat"}  # the package itself: its __init__ runs first
    assert all(not edges[m] for m in used)  # they import nothing of the package: data never leads back into model
