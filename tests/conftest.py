"""Shared fixtures. Thread caps keep the suite fast and deterministic on 2-core CI machines (faiss and torch
oversubscribe small problems badly). One tiny demo workspace is built once per session and shared by the
workflow, retrieval, eval and CLI tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(workspace path, demo summary) of a tiny demo run."""
    work = tmp_path_factory.mktemp("demo") / "work"
    summary = run_demo(work, DemoConfig.tiny())
    return work, summary


@pytest.fixture()
def ws_copy(demo_ws: tuple[Path, dict], tmp_path: Path) -> tuple[Any, dict]:
    """(a Workspace over a private copy of the demo workspace, the demo summary): for tests that write."""
    import shutil

    from adslog.workspace import Workspace

    work, summary = demo_ws
    dst = tmp_path / "work"
    shutil.copytree(work, dst)
    return Workspace(dst), summary
