"""Shared fixtures. Thread caps keep the suite fast and deterministic on 2-core CI machines (faiss and torch
oversubscribe small problems badly). One tiny demo workspace is built once per session and shared by the
workflow, retrieval, eval and CLI tests; tests that write get a private copy (`ws_copy`), never a rebuild."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
try:
    import faiss  # noqa: E402

    faiss.omp_set_num_threads(1)
except ImportError:  # pragma: no cover - faiss is a test requirement through the `cpu` extra
    pass

from workflow.demo import DemoConfig, run_demo  # noqa: E402


def demo_config() -> DemoConfig:
    """The tests' demo: `DemoConfig.tiny()` shrunk to what the assertions need, since every test that runs a
    daily cycle pays for its size. 6 days (3 bootstrap, 2 daily, 1 evaluated; tests use the last two daily days
    and the last three bootstrap days), 8,000 impressions a day (tiny: 15,000) and a 60-user slate sample
    (default 300; `tests/test_eval_slate.py` checks the slate itself). On this world the ranker's ROC-AUC is 0.75
    and recall@100 0.78 against 0.48 for random retrieval (`test_trained_models_beat_chance`), and the one-off
    index builds of `tests/test_index_cli.py` pass the cycle's self-check gate of 0.9 (IVF8 at nprobe 1: 0.997,
    hnswlib M16: 0.950). Smaller worlds measured on the way (6,000 impressions a day, or one bootstrap epoch
    of the towers and two of the ranker) put some of those recalls at 0.56-0.88, under the gate."""
    tiny = DemoConfig.tiny()
    return replace(
        tiny,
        synth=replace(tiny.synth, n_days=6, impressions_per_day=8_000),
        train_days=3,
        cycle=replace(tiny.cycle, slate_users=60),
    )


@pytest.fixture(scope="session")
def demo_cfg() -> DemoConfig:
    return demo_config()


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory: pytest.TempPathFactory, demo_cfg: DemoConfig) -> tuple[Path, dict]:
    """(workspace path, demo summary) of the tests' demo run (`demo_config`). Under pytest-xdist (`make test`
    runs two workers) the first worker to need it builds it in the folder the workers share, under a lock,
    and the other waits for it and reads it: one build per session, not one per worker. Its summary then
    comes back through JSON in every worker alike."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        work = tmp_path_factory.mktemp("demo") / "work"
        return work, run_demo(work, demo_cfg)
    import fcntl
    import json

    shared = tmp_path_factory.getbasetemp().parent / "demo-shared"
    shared.mkdir(exist_ok=True)
    done = shared / "summary.json"
    with open(shared / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            summary = run_demo(shared / "work", demo_cfg)
            (shared / "summary.tmp").write_text(json.dumps(summary))
            os.replace(shared / "summary.tmp", done)
    return shared / "work", json.loads(done.read_text())


@pytest.fixture()
def ws_copy(demo_ws: tuple[Path, dict], tmp_path: Path) -> tuple[Any, dict]:
    """(a Workspace over a private copy of the demo workspace, the demo summary): for tests that write."""
    import shutil

    from adslog.workspace import Workspace

    work, summary = demo_ws
    dst = tmp_path / "work"
    shutil.copytree(work, dst)
    return Workspace(dst), summary


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`synth_data(cfg, name)`: a synthetic dataset generated from `cfg` under a fresh temporary folder, opened."""
    from adslog.dataset import Dataset
    from adslog.synth import SynthConfig, generate

    def make(cfg: SynthConfig, name: str) -> Dataset:
        root = tmp_path_factory.mktemp(name) / "data"
        generate(cfg, root)
        return Dataset.open(root)

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test that needs the demo workspace goes first, the other tests that need it last (a stable
    sort: each group keeps its order). Under pytest-xdist (`make test`: two workers, `--dist worksteal`, which
    gives each worker a contiguous half of the tests and lets an idle one take over the rest of the other's)
    one worker builds the workspace at once while the other starts on its half, which begins with tests that
    do not need it. Run serially, only the order changes."""
    needs = ["demo_ws" in getattr(it, "fixturenames", ()) for it in items]
    first = needs.index(True) if any(needs) else -1
    rank = [0 if i == first else 2 if n else 1 for i, n in enumerate(needs)]
    items[:] = [it for _, it in sorted(zip(rank, items, strict=True), key=lambda p: p[0])]
