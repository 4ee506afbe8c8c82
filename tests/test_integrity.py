"""The corruption matrix: each way a published artifact can go bad x the commands that read it.

Every case must end in one `Error: <file>: <problem>` line and exit code 1: never a served NaN, a metric
computed from garbage, a traceback or a silent fallback to another version.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adslog.workspace import Workspace
from cli import main
from embstore.store import embeddings_dir
from index.versions import index_dir
from ranking.train import ranker_dir

runner = CliRunner()


def _serving(work: Path, family: str) -> Path:
    ws = Workspace(work)
    parent = {"store": embeddings_dir(ws, "ctr"), "index": index_dir(ws), "ranker": ranker_dir(ws)}[family]
    return parent / f"day={ws.latest_day(parent)}"


def _replace(f: Path, data: bytes) -> None:
    f.unlink()  # published files may be hard links shared with other versions: replace, never write into
    f.write_bytes(data)


def nan_in_ad_vecs(work: Path) -> Path:
    f = _serving(work, "store") / "ad_vecs.npy"
    a = np.load(f)
    a[3, :] = np.nan
    f.unlink()
    np.save(f, a)
    return f


def user_rows_reversed(work: Path) -> Path:
    f = _serving(work, "store") / "user_vecs.npy"
    a = np.load(f)
    f.unlink()
    np.save(f, a[::-1].copy())
    return f


def random_ranker_weights(work: Path) -> Path:
    f = _serving(work, "ranker") / "weights.pt"
    _replace(f, np.random.default_rng(0).bytes(f.stat().st_size))
    return f


def flipped_index_byte(work: Path) -> Path:
    f = _serving(work, "index") / "index.faiss"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    _replace(f, bytes(raw))
    return f


def truncated_store_ids(work: Path) -> Path:
    f = _serving(work, "store") / "user_ids.npy"
    _replace(f, f.read_bytes()[:-8])
    return f


def index_manifest_deleted(work: Path) -> Path:
    d = _serving(work, "index")
    (d / "manifest.json").unlink()
    return d.parent / "LATEST"


def latest_names_missing_version(work: Path) -> Path:
    ws = Workspace(work)
    p = ranker_dir(ws) / "LATEST"
    p.write_text(json.dumps({"name": "day=99999"}))
    return p


CORRUPTIONS: list[Callable[[Path], Path]] = [
    nan_in_ad_vecs,
    user_rows_reversed,
    random_ranker_weights,
    flipped_index_byte,
    truncated_store_ids,
    index_manifest_deleted,
    latest_names_missing_version,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda c: c.__name__)
def test_corruption_is_refused_by_query_and_eval(
    corrupt: Callable[[Path], Path], demo_ws: tuple[Path, dict], tmp_path: Path
) -> None:
    src, summary = demo_ws
    work = tmp_path / "work"
    shutil.copytree(src, work)
    user = _a_known_user(work)
    ok = runner.invoke(main, ["query", "--work", str(work), "--user", str(user), "--json"])
    assert ok.exit_code == 0, ok.output
    bad = corrupt(work).resolve()
    for args in (
        ["query", "--work", str(work), "--user", str(user), "--json"],
        ["eval", "--work", str(work), "--json"],
    ):
        r = runner.invoke(main, args)
        assert r.exit_code == 1, (args[0], r.stdout, r.stderr)
        assert r.stdout == ""
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {bad}"), (args[0], r.stderr)


def _a_known_user(work: Path) -> int:
    ws = Workspace(work)
    ids = np.load(_serving(work, "store") / "user_ids.npy")
    assert ws.latest_day(embeddings_dir(ws, "ctr")) is not None
    return int(ids[0])
