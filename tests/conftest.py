"""Shared fixtures. Thread caps keep the suite fast and deterministic on 2-core CI machines (faiss and torch
oversubscribe small problems badly). One tiny demo workspace is built once per session and shared by the
workflow, retrieval, eval and CLI tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
try:
    import faiss  # noqa: E402

    faiss.omp_set_num_threads(1)
except ImportError:  # pragma: no cover - faiss is a test requirement through the `cpu` extra
    pass

from adslog.synth import SynthConfig  # noqa: E402
from index import IndexConfig  # noqa: E402
from ranking.model import RankerConfig  # noqa: E402
from towers.config import TowerConfig  # noqa: E402
from workflow.cycle import CycleConfig  # noqa: E402
from workflow.demo import DemoConfig, run_demo  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_demo_config(seed: int = 0) -> DemoConfig:
    """A demo small enough for unit tests (~15 s), large enough that a trained model beats chance."""
    return DemoConfig(
        synth=SynthConfig(n_users=1500, n_ads=900, n_days=7, impressions_per_day=15_000, seed=seed),
        train_days=4,
        cycle=CycleConfig(
            towers=TowerConfig(dim=16, token_dim=8, hidden=(64,), batch_size=512, epochs_initial=2, seed=seed),
            ranker=RankerConfig(token_dim=8, hidden=(64,), batch_size=1024, epochs_initial=2, seed=seed),
            index=IndexConfig(dim=16),
            self_check_queries=200,
            device="cpu",
        ),
    )


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(workspace path, demo summary) of a tiny demo run."""
    work = tmp_path_factory.mktemp("demo") / "work"
    summary = run_demo(work, tiny_demo_config())
    return work, summary
