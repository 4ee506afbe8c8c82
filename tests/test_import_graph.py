"""The project's packages import each other without a cycle (issue 18): module-level imports (including those
under `if TYPE_CHECKING:`, which type checkers follow) form a DAG. Lazy imports inside functions are how an
optional heavy dependency is loaded on demand, not a way around a cycle, so they are not edges here."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.cache  # the tree does not change during a run: parsed once for every test here
def _modules() -> dict[str, Path]:
    mods = {"cli": ROOT / "cli.py"}
    for init in ROOT.glob("*/__init__.py"):
        if init.parent.name == "tests":
            continue
        for f in init.parent.rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(tree: ast.Module) -> list[str]:
    out: list[str] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.Import):
                out.extend(a.name for a in s.names)
            elif isinstance(s, ast.ImportFrom) and s.level == 0 and s.module:
                out.append(s.module)
                out.extend(f"{s.module}.{a.name}" for a in s.names)  # `from pkg import module`
            elif isinstance(s, ast.If | ast.Try):
                visit(s.body)
                visit(s.orelse)
                for h in getattr(s, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return out


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


@functools.cache
def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(_parse(f)) if i in mods and i != m} for m, f in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_detector_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_covers_the_packages() -> None:
    g = import_graph()
    assert {"index.types", "index.boundary", "index.exact", "index.backends", "workflow.ops", "cli"} <= set(g)
    assert "index.types" in g["index.faiss_backend"] and "index.exact" in g["index.hnsw_backend"]


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_index_package_imports_in_a_fresh_interpreter() -> None:
    """A backend module imported first (the way `index.base` used to cycle with both backends) and then the rest:
    the package initialises cleanly in a new process, which a session with everything already imported cannot
    show."""
    names = sorted((m for m in _modules() if m.startswith("index.")), key=lambda m: "backend" not in m)
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    r = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


# The stages in data-flow order (CONVENTIONS 4, the README's architecture list): a package imports only from
# packages before it. `dermcore` is the bottom (errors, artifacts, progress, safe paths), `adslog` the data layer
# on it, `dermfeatures` (feature spec, input batches) and `dermtrain` (the one training loop, optimiser, data
# parallelism) the utilities the towers and the ranker share, `adserving` the serving stage after the ranker,
# and `cli` the top.
STAGES = (
    "dermcore",
    "adslog",
    "dermfeatures",
    "dermtrain",
    "towers",
    "embstore",
    "adgraph",
    "index",
    "retrieval",
    "ranking",
    "adserving",
    "eval",
    "dermdist",
    "workflow",
    "dermserve",
    "cli",
)


def _package(module: str) -> str:
    return module.split(".")[0]


def _every_import(path: Path) -> set[str]:
    """Top-level package of every absolute import anywhere in the file, lazy ones inside functions included."""
    out: set[str] = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            out.update(_package(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(_package(node.module))
    return out


def _imports_of_package(package: str) -> dict[str, set[str]]:
    """Per module of `package`: the other derm packages it imports, lazily or not."""
    mods = _modules()
    derm = {_package(m) for m in mods}
    return {m: (_every_import(f) & derm) - {package} for m, f in mods.items() if _package(m) == package}


def test_the_stage_list_names_every_package() -> None:
    assert set(STAGES) == {_package(m) for m in _modules()}


def test_dermcore_imports_no_other_derm_package() -> None:
    got = _imports_of_package("dermcore")
    assert {"dermcore.errors", "dermcore.artifact", "dermcore.progress", "dermcore.safepath"} <= set(got)
    assert {m: sorted(d) for m, d in got.items() if d} == {}


def test_adslog_imports_only_dermcore() -> None:
    """The data layer stands on the core alone: nothing from a later stage, not even lazily."""
    got = _imports_of_package("adslog")
    assert {"adslog.dataset", "adslog.workspace"} <= set(got)
    assert {m: sorted(d - {"dermcore"}) for m, d in got.items() if d - {"dermcore"}} == {}


def test_a_stage_imports_only_earlier_stages() -> None:
    rank = {p: i for i, p in enumerate(STAGES)}
    late = sorted(
        (m, d) for m, deps in import_graph().items() for d in deps if rank[_package(d)] > rank[_package(m)]
    )
    assert late == []
    assert "adserving.two_stage" in import_graph()["eval.slate"]  # the check sees cross-package edges


def test_the_workspace_names_no_stage_folder(tmp_path: Path) -> None:
    """Each stage owns its folder of the workspace (issue 18): `adslog.workspace` has no accessor for a later
    stage and no stage's folder name in its code (docstrings aside), and the stage-owned functions give the
    paths every earlier workspace was written with, so old workspaces keep loading."""
    from adgraph.graph import graph_dir
    from adgraph.snapshot import kge_dir
    from adslog.workspace import Workspace
    from embstore.store import embeddings_dir
    from eval.evaluate import eval_path, evals_dir
    from index.versions import index_dir
    from ranking.train import ranker_dir
    from towers.train import models_dir

    tree = _parse(ROOT / "adslog" / "workspace.py")
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    words = {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    }
    folders = {"models", "embeddings", "graph", "kge", "index", "ranker", "evals", "rejected"}
    assert not folders & words
    methods = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not {m for m in methods if m.endswith("_dir")} | ({"eval_path"} & methods)
    ws = Workspace(tmp_path)
    assert models_dir(ws, "ctr") == tmp_path / "models" / "ctr"
    assert embeddings_dir(ws, "kge-transra") == tmp_path / "embeddings" / "kge-transra"
    assert graph_dir(ws) == tmp_path / "graph" and kge_dir(ws, "transra") == tmp_path / "kge" / "transra"
    assert index_dir(ws) == tmp_path / "index" and ranker_dir(ws) == tmp_path / "ranker"
    assert evals_dir(ws) == tmp_path / "evals" and eval_path(ws, 7) == tmp_path / "evals" / "day=7.json"
