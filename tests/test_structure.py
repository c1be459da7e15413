"""The package's shape: no import circles, and nothing under the facade imports it.

Every import counts — at module level, inside functions, and under TYPE_CHECKING —
because a circle that only lazy imports hide still means two modules that each need
the other to be understood.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "modelhub_torch"
FACADE = "modelhub_torch.repository"
# what the facade is built on: none of these may import it
BELOW_FACADE = (
    "modelhub_torch.store", "modelhub_torch.records", "modelhub_torch.resolution", "modelhub_torch.publish",
    "modelhub_torch.commit", "modelhub_torch.prune", "modelhub_torch.archive", "modelhub_torch.maintenance",
    "modelhub_torch.reader", "modelhub_torch.writer", "modelhub_torch.manifest", "modelhub_torch.skeleton",
    "modelhub_torch.skeleton_check", "modelhub_torch.resumable", "modelhub_torch.pas", "modelhub_torch.kernels",
    "modelhub_torch.dql", "modelhub_torch.trials", "modelhub_torch.netedit", "modelhub_torch.architecture",
    "modelhub_torch.node_patterns",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports anywhere in its source."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    assert _cycles(graph) == []


def test_nothing_below_the_facade_imports_it() -> None:
    graph = _graph()
    below = [m for m in graph if m.startswith(BELOW_FACADE)]
    assert len(below) > 20
    assert sorted(m for m in below if FACADE in graph[m]) == []


def test_catalog_commands_start_without_torch_or_numba(tmp_path) -> None:
    """list, desc, query, tag and stats read the index and manifests only: they import
    neither torch nor numba (an import of torch alone takes seconds)."""
    import torch

    from modelhub_torch import Repository

    repo = Repository.init(tmp_path / "r")
    repo.commit({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, "m", metrics={"acc": 0.5})
    repo.commit({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, "m", metrics={"acc": 0.7})
    repo.catalog.close()
    code = (
        "import sys\n"
        "from modelhub_torch.cli import main\n"
        f"root = {str(tmp_path / 'r')!r}\n"
        "for args in (['list'], ['desc', 'm@v1'], ['query', 'select m where m.metrics.acc > 0.6'],\n"
        "             ['tag', 'm@v2', 'best'], ['stats'], ['--json', 'list']):\n"
        "    assert main(['--repo', root, *args]) == 0, args\n"
        "print('LOADED', sorted(m for m in ('torch', 'numba', 'pytorch_lightning') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "m@v2" in out.stdout and "LOADED []" in out.stdout, out.stdout + out.stderr
