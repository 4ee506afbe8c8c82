"""Upstream-model throughput on CPU at the default `TowerConfig`: training samples/s (DHEN, and the MLP backbone
beside it), inference entities/s (user and Pin towers) and the Parquet-to-tensor loader alone.

Data: the default synthetic log (`SynthConfig()`, the demo's: 14 days x 100k impressions), generated once into
benchmarks/work/towers_throughput/data; the towers are built over its first 7 days (the demo's bootstrap window).

Each repetition measures, interleaved in this order so that machine noise hits every figure alike:
* loader: one day's impressions read from Parquet (`Inputs.impressions`) and turned into training batches of
  `batch_size` (`Inputs.impression_batch`: entity features, point-in-time activity sequences, context, ids ->
  tensors), i.e. everything the training loop does before the model sees a batch; samples/s = rows / seconds;
* training step (DHEN, then MLP): forward, losses, backward and optimiser step of the training task on batches
  built before the clock starts; samples/s = steps * batch_size / seconds;
* inference (DHEN): `towers.infer.embed_users` for one day's active users (sequences up to the end of the
  day) and `embed_ads` for the ads live that day, batch building included, entities/s.
Medians over the repetitions; the loader must be >= 5x the (DHEN) training step. One torch thread (the loader
is single-threaded numpy too): on a shared 2-core machine two OpenMP threads spin against other processes and
made the step 20x slower in one run, so per-core figures are the ones that compare. Writes
benchmarks/results/towers_throughput.json. Usage: python benchmarks/towers_throughput.py
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from common import ROOT, write_result

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.synth import SynthConfig, generate
from dermfeatures.batches import Inputs
from dermfeatures.spec import build_feature_spec
from towers.config import Backbone, TowerConfig
from towers.infer import embed_ads, embed_users
from towers.train import Snapshot, new_snapshot

WORK = ROOT / "benchmarks" / "work" / "towers_throughput"
REPS, TRAIN_STEPS, WARMUP_STEPS, TRAIN_DAYS, THREADS = 5, 8, 2, 7, 1
CPU = torch.device("cpu")


def train_steps(snap: Snapshot, batches: list[dict[str, torch.Tensor]]) -> float:
    """Seconds for one training step per batch (the body of `dermtrain.loop.run_epochs` minus batch building)."""
    snap.task.train()
    t0 = time.perf_counter()
    for b in batches:
        loss, _ = snap.task(b)
        snap.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        snap.optimizer.step()
    return time.perf_counter() - t0


def loader_pass(inputs: Inputs, day: int, batch_size: int, seed: int) -> tuple[float, int]:
    """(seconds, rows) to read one day from Parquet and build all its shuffled training batches."""
    t0 = time.perf_counter()
    arrays = inputs.impressions([day], label_cutoff_ts=(day + 1) * 86400)
    perm = np.random.default_rng(seed).permutation(len(arrays))
    n = len(arrays) // batch_size * batch_size
    for s in range(0, n, batch_size):
        inputs.impression_batch(arrays.take(perm[s : s + batch_size]))
    return time.perf_counter() - t0, n


def main() -> None:
    torch.set_num_threads(THREADS)
    data = WORK / "data"
    if not (data / "manifest.json").exists():
        generate(SynthConfig(), data, overwrite=data.exists())
    ds = Dataset.open(data)
    days = ds.days()
    train_days, day = days[:TRAIN_DAYS], days[TRAIN_DAYS - 1]
    cfgs = {"dhen": TowerConfig(), "mlp": replace(TowerConfig(), backbone=Backbone.MLP)}
    cfg = cfgs["dhen"]
    t0 = time.perf_counter()
    spec = build_feature_spec(ds, train_days, cfg.id_buckets)
    inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, day), cfg.seq_len)
    setup_seconds = time.perf_counter() - t0
    snaps = {k: new_snapshot(spec, c, CPU) for k, c in cfgs.items()}
    arrays = inputs.impressions(train_days, label_cutoff_ts=(day + 1) * 86400)
    rng = np.random.default_rng(0)
    batches = [
        inputs.impression_batch(arrays.take(rng.choice(len(arrays), cfg.batch_size, replace=False)))
        for _ in range(TRAIN_STEPS)
    ]
    for snap in snaps.values():
        train_steps(snap, batches[:WARMUP_STEPS])
    imp = ds.impressions(day, ["user_id"])
    users = np.unique(imp.column("user_id").to_numpy()).astype(np.int64)
    ads = ds.live_ads(day).astype(np.int64)
    end_of_day = np.full(len(users), (day + 1) * 86400, np.int64)
    n_train = TRAIN_STEPS * cfg.batch_size
    sec: dict[str, list[float]] = {
        k: [] for k in ("loader", "train_dhen", "train_mlp", "user_tower", "pin_tower")
    }
    loader_rows = 0
    for rep in range(REPS):
        s, loader_rows = loader_pass(inputs, day, cfg.batch_size, seed=rep)
        sec["loader"].append(s)
        for k, snap in snaps.items():
            sec[f"train_{k}"].append(train_steps(snap, batches))
        t = time.perf_counter()
        embed_users(snaps["dhen"].towers, inputs, users, end_of_day)
        sec["user_tower"].append(time.perf_counter() - t)
        t = time.perf_counter()
        embed_ads(snaps["dhen"].towers, inputs, ads)
        sec["pin_tower"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in sec.items()}
    loader_sps = loader_rows / med["loader"]
    train_sps = {k: n_train / med[f"train_{k}"] for k in cfgs}
    result: dict[str, Any] = {
        "command": "python benchmarks/towers_throughput.py",
        "config": cfg.to_json(),
        "data": {"synth": "SynthConfig() defaults", "train_days": train_days, "loader_day": day},
        "repetitions": REPS,
        "cpu": {
            "train_samples_per_second": round(train_sps["dhen"], 1),
            "train_samples_per_second_mlp_backbone": round(train_sps["mlp"], 1),
            "inference_users_per_second": round(len(users) / med["user_tower"], 1),
            "inference_ads_per_second": round(len(ads) / med["pin_tower"], 1),
            "loader_samples_per_second": round(loader_sps, 1),
            "loader_over_train_step": round(loader_sps / train_sps["dhen"], 2),
            "loader_over_train_step_mlp_backbone": round(loader_sps / train_sps["mlp"], 2),
            "loader_bar_met": bool(loader_sps >= 5 * train_sps["dhen"]),
            "n_users_embedded": int(len(users)),
            "n_ads_embedded": int(len(ads)),
            "loader_rows": int(loader_rows),
            "train_samples_per_repetition": n_train,
            "setup_seconds": round(setup_seconds, 3),
            "median_seconds": {k: round(v, 4) for k, v in med.items()},
            "seconds": {k: [round(x, 4) for x in v] for k, v in sec.items()},
        },
        "cuda": None,
        "cuda_reason": (
            "no CUDA device on the machine that ran this benchmark (torch.cuda.is_available() is False)"
            if not torch.cuda.is_available()
            else "CUDA figures are not measured by this script"
        ),
    }
    path = write_result("towers_throughput", result)
    print(
        json.dumps({"results": str(path), **{k: v for k, v in result["cpu"].items() if "seconds" not in k}})
    )


if __name__ == "__main__":
    main()
