"""The paper's appendix D.1 on our data: the DERM projection layer. With all four DERM inputs at upstream dim 128
(4 x 128 = 512 inputs), compare the ranker with the DERM vectors entering the DCNv2 experts as they are against
the same ranker with a projection layer (512 -> 128) in front: ROC-AUC / PR-AUC of the CTR head (lift vs the
same ranker with no DERM input, in %) and training throughput.

Experts are full-rank DCNv2 here (`cross_rank=None`), where a layer costs O(d^2) in the input width d, the cost
the paper's projection layer cuts. Throughput is measured side by side: both models train on the same pre-built
batches in alternating blocks of steps (order swapped every repetition), samples/s per block, median over
repetitions; it is the model's step (forward, backward, optimiser), not the batch building, which is the same
for both. The AUC runs train each arm with early stopping on a validation day, 3 seeds, same config.

Data: synthetic; both upstream models (dim 128) are trained once per seed on a window and back-infer its days;
the ranker trains on the window's later days (day d reads the store version before d), validates on the last
window day and is tested on the two days after the window (reading the window's last version).
Usage: python benchmarks/projection.py
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
from harness import mean_std, upstream

from adslog.dataset import Dataset
from adslog.sequences import ActivityLog
from adslog.synth import SynthConfig, generate
from adslog.workspace import Workspace
from dermfeatures.batches import Inputs
from eval.metrics import pr_auc, roc_auc
from ranking.model import DERM_INPUTS, RankerConfig
from ranking.train import (
    DermLookup,
    FittedWide,
    RankerRows,
    RankerTask,
    fit,
    fitted_wide,
    new_snapshot,
    predict,
    ranker_spec,
    start_ranker,
)
from towers.config import Backbone, TowerConfig

WORK = ROOT / "benchmarks" / "work" / "projection"
SEEDS = (0, 1, 2)
DIM = 128
PROJECTION = 128
ARMS = {"none": ((), None), "no_projection": (DERM_INPUTS, None), "projection": (DERM_INPUTS, PROJECTION)}
PAPER = {"no_projection_lift_pct": 0.19, "projection_lift_pct": 0.18, "throughput_gain_pct": 5.68}
REPS, STEPS = 7, 6


def throughput(spec: Any, cfg: RankerConfig, rows: RankerRows) -> dict[str, Any]:
    """Interleaved model-step throughput (samples/s) of the two DERM arms on the same batches."""
    bs = cfg.batch_size
    batches = [rows.batch(np.arange(i * bs, (i + 1) * bs)) for i in range(STEPS)]
    tasks = {}
    for arm in ("no_projection", "projection"):
        derm, proj = ARMS[arm]
        snap = new_snapshot(
            spec, replace(cfg, derm_inputs=derm, derm_projection=proj), DIM, torch.device("cpu")
        )
        tasks[arm] = (RankerTask(snap.ranker), snap.optimizer, snap.ranker.input_width)
    rates: dict[str, list[float]] = {a: [] for a in tasks}

    def block(arm: str) -> float:
        task, opt, _ = tasks[arm]
        t0 = time.perf_counter()
        for b in batches:
            loss, _ = task(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return STEPS * bs / (time.perf_counter() - t0)

    for arm in tasks:  # warm-up
        block(arm)
    for r in range(REPS):
        for arm in ("no_projection", "projection") if r % 2 == 0 else ("projection", "no_projection"):
            rates[arm].append(block(arm))
    med = {a: statistics.median(v) for a, v in rates.items()}
    return {
        "samples_per_second_median": med,
        "samples_per_second_all": rates,
        "dcn_input_width": {a: t[2] for a, t in tasks.items()},
        "throughput_gain_pct": 100 * (med["projection"] / med["no_projection"] - 1),
        "repetitions": REPS,
        "steps_per_block": STEPS,
        "batch_size": bs,
    }


def main() -> None:
    torch.set_num_threads(
        1
    )  # see ranker_ablation.py: 2 threads per process thrash on a shared 2-core machine
    t0 = time.perf_counter()
    synth_cfg = SynthConfig(n_users=2000, n_ads=1000, n_advertisers=80, n_days=8, impressions_per_day=8000)
    data = WORK / "synthetic_data"
    if not (data / "manifest.json").exists():
        generate(synth_cfg, data)
    ds = Dataset.open(data)
    days = ds.days()
    window, test = days[:6], days[6:]
    train_days, val_days = window[2:5], window[5:]
    # the foundation's MLP backbone upstream (cheaper than DHEN on CPU): the benchmark measures the ranker
    towers = TowerConfig(dim=DIM, token_dim=32, backbone=Backbone.MLP, batch_size=1024, epochs_initial=2)
    ranker = RankerConfig(
        token_dim=8, hidden=(32,), cross_rank=None, seq_heads=1, epochs_initial=3, early_stopping=True
    )
    scores: dict[str, dict[str, list[float]]] = {a: {"roc_auc": [], "pr_auc": []} for a in ARMS}
    fit_rates: dict[str, list[float]] = {a: [] for a in ARMS}
    tput: dict[str, Any] = {}
    for seed in SEEDS:
        ws = Workspace.open(WORK / f"seed{seed}", data)
        upstream(ws, ds, window, replace(towers, seed=seed))
        spec = ranker_spec(ds, train_days, ranker)
        inputs = Inputs(ds, spec, ActivityLog.from_dataset(ds, test[-1]), ranker.seq_len)
        lookup = DermLookup(ws, DERM_INPUTS)
        cutoff = (val_days[-1] + 1) * 86400

        train, val, tst = (
            RankerRows(inputs, a, lookup.features(a, DIM))
            for a in (
                inputs.impressions(train_days, label_cutoff_ts=cutoff),
                inputs.impressions(val_days, label_cutoff_ts=cutoff),
                inputs.impressions(test),
            )
        )
        if seed == SEEDS[0]:
            tput = throughput(spec, ranker, train)
        wide: FittedWide | None = None  # reads no DERM input: fitted once per seed, copied into every arm
        for arm, (derm, proj) in ARMS.items():
            cfg = replace(ranker, derm_inputs=derm, derm_projection=proj, seed=seed)
            snap = new_snapshot(spec, cfg, DIM, torch.device("cpu"))
            rec = start_ranker(snap, inputs, train, train_days, cutoff, wide)  # the path train_ranker takes
            wide = wide or fitted_wide(snap, rec, cutoff)
            st = fit(snap, train, val, cfg.epochs_initial, torch.device("cpu"), seed=seed)
            fit_rates[arm].append(st["samples_per_second"])
            p = predict(snap.ranker, tst)[:, 0]
            scores[arm]["roc_auc"].append(float(roc_auc(p, tst.arrays.click)))  # type: ignore[arg-type]
            scores[arm]["pr_auc"].append(float(pr_auc(p, tst.arrays.click)))  # type: ignore[arg-type]
            print(f"seed {seed} {arm}: {scores[arm]['roc_auc'][-1]:.4f} ({st['seconds']} s)", flush=True)
    arms: dict[str, Any] = {}
    for arm, sc in scores.items():
        e: dict[str, Any] = {"seeds": list(SEEDS), "fit_samples_per_second": fit_rates[arm]}
        for m, v in sc.items():
            mean_std(e, m, v)
            if arm != "none":
                base = statistics.mean(scores["none"][m])
                e[f"{m}_lift_pct"] = 100 * (e[f"{m}_mean"] - base) / base
        arms[arm] = e
    result = {
        "command": "python benchmarks/projection.py",
        "derm_inputs": list(DERM_INPUTS),
        "upstream_dim": DIM,
        "derm_width": len(DERM_INPUTS) * DIM,
        "projection_width": PROJECTION,
        "days": {"upstream_window": window, "train": train_days, "validation": val_days, "test": test},
        "synth_config": synth_cfg.__dict__,
        "ranker_config": ranker.to_json(),
        "arms": arms,
        "throughput_interleaved": tput,
        "paper": PAPER,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    path = write_result("projection", result)
    print(json.dumps({"results": str(path), "wall_seconds": result["wall_seconds"]}))


if __name__ == "__main__":
    main()
