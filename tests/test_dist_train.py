"""Issue 16 item 2: data-parallel training (torch DDP, `dermtrain.parallel`) through the one training loop.

In the default run: a group of one worker (gloo, in this process) takes exactly the single-process steps, so
its weights equal the single-process ones. Marked slow (each starts Ray and Ray Train worker groups, ~30 s a
group on 2 cores): two Ray Train workers reach the single-process quality within the seed spread, and a
killed worker or driver during a distributed day leaves every published version intact and the rerun
resumes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from dermcore.artifact import get_latest, read_json
from dermcore.errors import ConfigError, DermError
from dermdist import RayTrainConfig
from dermfeatures.batches import Inputs
from dermtrain.parallel import DataParallel
from embstore.store import embeddings_dir
from ranking.train import ranker_dir, train_ranker
from towers.train import load_snapshot, models_dir, train_towers
from workflow.cycle import CycleConfig, load_cycle_config

ROOT = Path(__file__).resolve().parents[1]
HAVE_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture()
def group_of_one(tmp_path: Path) -> Any:
    """A gloo process group of one worker (this process), as Ray Train sets one up per worker."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield DataParallel.from_group()
    dist.destroy_process_group()


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], parent: dict) -> None:
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
        moved += int(not torch.equal(a[k], parent[k]))
    assert moved > len(a) // 3  # the increment really trained (most tensors moved)


def test_one_worker_equals_single_process(ws_copy: tuple[Workspace, dict], group_of_one: Any) -> None:
    """The towers' increment and the ranker's fine-tune of a daily day, in one process and as the only worker
    of a DDP group: equal weights (float tolerance), the same published statistics, and worker 0 publishes."""
    ws, s = ws_copy
    ds, day = ws.dataset(), s["daily_days"][-1]
    cfg = load_cycle_config(ws, "cpu")
    mdir = models_dir(ws, "ctr")
    parent = mdir / version_name(day - 1)
    par = group_of_one
    assert (par.rank, par.world, par.chief) == (0, 1, True)
    runs = {}
    for name, p in (("single", None), ("ddp", par)):
        out = ws.root / f"models-{name}"
        m = train_towers(ds, [day], cfg.towers, out, parent=parent, device="cpu", parallel=p)
        runs[name] = (m, _state(out / version_name(day) / "weights.pt"))
    (m1, w1), (m2, w2) = runs["single"], runs["ddp"]
    _assert_same_state(w1, w2, _state(parent / "weights.pt"))
    assert m2["train_stats"]["data_parallel"] == {"workers": 1, "rank": 0, "local_batch": 512}
    assert m1["train_stats"]["rows"] == m2["train_stats"]["rows"] == len(ds.impressions(day, ["ad_id"]))
    l1, l2 = m1["train_stats"]["loss_by_epoch"], m2["train_stats"]["loss_by_epoch"]
    assert [e["loss"] for e in l1] == pytest.approx([e["loss"] for e in l2], abs=1e-5)

    rdir = ranker_dir(ws)
    rparent = rdir / version_name(day - 1)
    ranker = {}
    for name, p in (("single", None), ("ddp", par)):
        m = train_ranker(ws, ds, [day], cfg.ranker, rparent, "cpu", overwrite=True, parallel=p)
        ranker[name] = (m, _state(rdir / version_name(day) / "weights.pt"))
    _assert_same_state(ranker["single"][1], ranker["ddp"][1], _state(rparent / "weights.pt"))
    assert ranker["ddp"][0]["train_stats"]["data_parallel"]["workers"] == 1


def _sync_worker(rank: int, store: str, out: str) -> None:
    """One of two gloo workers: three sparse tables with different rows per worker (table b unused on
    worker 0, table c on both), their gradients synchronised by `sync_sparse_grads`."""
    from torch import nn

    from dermtrain.parallel import sparse_tables, sync_sparse_grads

    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    m = nn.ModuleDict({k: nn.Embedding(50, 3, padding_idx=0, sparse=True) for k in "abc"})
    for i, t in enumerate(m.values()):
        nn.init.constant_(t.weight, float(i + 1))
    ids = {"a": [[1, 2, 2, 7], [2, 9, 0, 3]][rank], "b": [[], [4, 4, 5]][rank]}
    loss = sum((m[k](torch.tensor(v)) * (rank + 1)).sum() for k, v in ids.items() if v)
    loss.backward()  # type: ignore[union-attr]
    tables = sparse_tables(m)
    sync_sparse_grads(tables, 2)
    torch.save({n: None if p.grad is None else p.grad.to_dense() for n, p in tables}, out)
    dist.destroy_process_group()


def test_sparse_grads_are_the_groups_mean(tmp_path: Path) -> None:
    """Each sparse table's gradient after `sync_sparse_grads` is the mean of the two workers' (rows one
    worker never touched included; padding row 0 has none); a table no worker used keeps no gradient."""
    outs = [str(tmp_path / f"g{r}.pt") for r in range(2)]
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_sync_worker, args=(r, f"file://{tmp_path / 'store'}", outs[r])) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    g0, g1 = (torch.load(o) for o in outs)
    expect_a = torch.zeros(50, 3)
    for rank, rows in enumerate([[1, 2, 2, 7], [2, 9, 0, 3]]):
        for r in rows:
            if r:
                expect_a[r] += (rank + 1) / 2
    expect_b = torch.zeros(50, 3)
    expect_b[4], expect_b[5] = 2 * 2 / 2, 2 / 2
    for g in (g0, g1):
        assert torch.equal(g["a.weight"], expect_a) and torch.equal(g["b.weight"], expect_b)
        assert g["c.weight"] is None


def test_shard_rules() -> None:
    """Rows r % world == rank: disjoint, together every row once, balanced to one row; global batch split."""
    n = 10
    shards = [DataParallel(r, 3).rows(n) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    assert DataParallel(1, 3).local_batch(2048) == 682 and DataParallel(0, 1).local_batch(2048) == 2048
    assert not DataParallel(1, 2).chief
    with pytest.raises(DermError, match="rank 2 is outside a group of 2"):
        DataParallel(2, 2)
    with pytest.raises(DermError, match="needs an initialised torch.distributed process group"):
        DataParallel.from_group()


def test_worker_reads_only_its_rows(demo_ws: tuple[Path, dict]) -> None:
    """Each worker builds features for its own rows only (taken before any feature is built)."""
    work, s = demo_ws
    ws = Workspace(work)
    ds, day = ws.dataset(), s["daily_days"][-1]
    snap = load_snapshot(models_dir(ws, "ctr") / version_name(day), "cpu", with_state=False)
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, day), snap.config.seq_len)
    whole = inputs.impressions([day])
    parts = [inputs.impressions([day], rows=DataParallel(r, 2).rows) for r in range(2)]
    assert len(parts[0]) + len(parts[1]) == len(whole) and abs(len(parts[0]) - len(parts[1])) <= 1
    np.testing.assert_array_equal(parts[1].user_id, whole.user_id[1::2])
    np.testing.assert_array_equal(parts[0].ctx, whole.ctx[0::2])


def test_train_workers_config(ws_copy: tuple[Workspace, dict]) -> None:
    from click.testing import CliRunner

    from cli import main
    from workflow.cycle import ray_training, set_cycle_config

    ws, s = ws_copy
    cfg = set_cycle_config(ws, {"train_workers": "2"})
    assert cfg.train_workers == 2 and json.loads((ws.root / "cycle.json").read_text())["train_workers"] == 2
    assert ray_training(cfg) is None  # the local engine trains in this process
    rc = ray_training(replace(cfg, engine="ray", ray_address="auto"))  # type: ignore[arg-type]
    assert rc == RayTrainConfig(2, "auto")
    saved = json.loads((ws.root / "cycle.json").read_text())
    del saved["train_workers"]  # a cycle.json written before the option: training in the driver
    assert CycleConfig.from_json(saved).train_workers is None
    with pytest.raises(ConfigError, match="train_workers must be an integer >= 1"):
        CycleConfig(train_workers=0)
    r = CliRunner().invoke(
        main, ["daily", "--work", str(ws.root), "--day", str(s["eval_day"]), "--train-workers", "2"]
    )
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: --train-workers needs the ray engine (--engine ray)"


def _ctr_auc(ws: Workspace, model_dir: Path, day: int) -> float:
    """ROC-AUC of a tower snapshot's CTR head on the impressions of `day` (held out from its training)."""
    from sklearn.metrics import roc_auc_score

    ds = ws.dataset()
    snap = load_snapshot(model_dir, "cpu", with_state=False)
    inputs = Inputs(ds, snap.spec, ActivityLog.from_dataset(ds, day), snap.config.seq_len)
    a = inputs.impressions([day])
    with torch.no_grad():
        _, _, logits = snap.model(inputs.impression_batch(a))
    return float(roc_auc_score(a.click, logits[:, 0].numpy()))


@pytest.mark.slow
def test_two_workers_reach_single_process_quality(
    ws_copy: tuple[Workspace, dict], record_property: Any
) -> None:
    """Towers trained from scratch on the demo's training days: two Ray Train workers (DDP, gloo) against
    the single process at three seeds, by CTR ROC-AUC on the next (held-out) day."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'derm[dist]')")
    import ray

    from dermdist.train import train_towers_ray

    ws, s = ws_copy
    ds = ws.dataset()
    days, held_out = s["train_days"], s["train_days"][-1] + 1
    cfg = load_cycle_config(ws, "cpu").towers
    single = []
    for seed in (0, 1, 2):
        out = ws.root / f"single-{seed}"
        train_towers(ds, days, replace(cfg, seed=seed), out, device="cpu")
        single.append(_ctr_auc(ws, out / version_name(days[-1]), held_out))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        out = ws.root / "ddp"
        m = train_towers_ray(ds.root, days, cfg, out, None, "cpu", RayTrainConfig(2))
    finally:
        ray.shutdown()
    assert m["train_stats"]["data_parallel"] == {"workers": 2, "rank": 0, "local_batch": 256}
    n = sum(len(ds.impressions(d, ["ad_id"])) for d in days)
    assert abs(m["train_stats"]["rows"] - n / 2) <= 1  # worker 0 trained on its half
    two = _ctr_auc(ws, out / version_name(days[-1]), held_out)
    spread = max(single) - min(single)
    record_property("ctr_auc", {"single_seeds_0_1_2": single, "two_workers": two})  # shown with -rA
    assert min(single) > 0.55  # the single-process models learned something
    assert min(single) - max(spread, 0.01) <= two <= max(single) + max(spread, 0.01), (two, single)


def _daily_ray(ws: Workspace, day: int, crash_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DERM_CRASH_AT", "RAY_ADDRESS")}
    if crash_at:
        env["DERM_CRASH_AT"] = crash_at  # inherited by the Ray workers this driver's local Ray starts
    env["OMP_NUM_THREADS"] = "1"
    args = ["daily", "--work", str(ws.root), "--day", str(day), "--device", "cpu", "--json"]
    args += ["--engine", "ray", "--train-workers", "2"]
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def _manifests(ws: Workspace) -> dict[str, str]:
    return {
        str(p.relative_to(ws.root)): read_json(p)["artifact_id"]
        for p in ws.root.rglob("manifest.json")
        if ".tmp-" not in str(p)
    }


@pytest.mark.slow
def test_killed_worker_or_driver_then_rerun_resumes(ws_copy: tuple[Workspace, dict]) -> None:
    """`derm daily --engine ray --train-workers 2`: the training workers SIGKILLed after their first step
    fail the day with a one-line error and publish nothing; the driver SIGKILLed while publishing the store
    version (after the distributed training published its snapshot) leaves the published versions whole;
    the rerun keeps that snapshot and completes the day."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'derm[dist]')")
    ws, s = ws_copy
    day = s["eval_day"]
    before = _manifests(ws)
    latest = {d: get_latest(d) for d in (models_dir(ws, "ctr"), embeddings_dir(ws, "ctr"), ranker_dir(ws))}

    r = _daily_ray(ws, day, "train")  # both Ray Train workers kill themselves after their first step
    assert r.returncode == 1, r.stderr
    # one Error line (Ray's own processes may log around it on stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "Error: data-parallel training on 2 Ray workers failed; nothing was published ("
    ), r.stderr[-2000:]
    assert not (models_dir(ws, "ctr") / version_name(day)).exists()
    assert {k: v for k, v in _manifests(ws).items() if k in before} == before
    assert {d: get_latest(d) for d in latest} == latest

    r = _daily_ray(ws, day, "publish:embeddings")  # the driver dies with the store version not yet renamed
    assert r.returncode == -9, r.stderr
    model = read_json(models_dir(ws, "ctr") / version_name(day) / "manifest.json")
    assert model["train_stats"]["data_parallel"]["workers"] == 2
    assert get_latest(embeddings_dir(ws, "ctr")) == latest[embeddings_dir(ws, "ctr")]
    assert {k: v for k, v in _manifests(ws).items() if k in before} == before

    r = _daily_ray(ws, day, None)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["days"][0]
    assert "train_ctr" not in out["stage_seconds"] and "ranker" in out["stage_seconds"]  # resumed
    assert read_json(models_dir(ws, "ctr") / version_name(day) / "manifest.json") == model
    ranker = read_json(ranker_dir(ws) / version_name(day) / "manifest.json")
    assert ranker["train_stats"]["data_parallel"]["workers"] == 2
    assert not [p for p in ws.root.rglob(".tmp-*")]
    for d in latest:
        assert get_latest(d) == version_name(day)
    assert {k: v for k, v in _manifests(ws).items() if k in before} == before
