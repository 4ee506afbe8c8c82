"""SparseAdam (`lazy`) vs the catch-up sparse Adam (`catch_up`, `dermtrain.optim.CatchUpAdam`) on Gowalla,
beside plain MF with dense Adam, in one run (issue 13: the lazy moments cost most of the towers' gap to plain
MF).

Protocol: `benchmarks/gowalla.py`'s validation split (10 % of each user's train.txt items held out, seed 0) and
its ids-only towers as they were then (`BASE` below: mlp backbone, init 0.05), trained for EPOCHS epochs
through the benchmark's `train_with_curve` (the library's `run_epochs`), validation recall@20 / NDCG@20 after every epoch; test.txt is not touched. Arms: the
towers with SparseAdam at gowalla.py's chosen lr 0.06, the towers with catch-up at lr 0.01 and 0.03, and
`eval.baselines.plain_mf` with gowalla.py's reference recipe (dense Adam, exact tables) for the same epochs.
Beside them, the optimiser step alone: a 2^20 x 64 sparse table, batches of 2,048 ids (one thread), early in
training and past the step where the catch-up becomes one sum per row.
Usage: python benchmarks/sparse_optimizer.py   (writes benchmarks/results/sparse_optimizer.json)
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")

import gowalla as G  # noqa: E402
import torch  # noqa: E402
from common import write_result  # noqa: E402

from adslog.dataset import Dataset  # noqa: E402
from dermtrain.optim import SETTLED_STEP, TowerOptimizer  # noqa: E402

EPOCHS = 4
#: the Gowalla towers as gowalla.py trained them when this comparison was measured (mlp backbone, init 0.05);
#: gowalla.BASE has since moved to the sum backbone (gowalla_ablation.py)
BASE = {**G.BASE, "backbone": "mlp", "embedding_init_std": 0.05}
ARMS: dict[str, dict[str, Any]] = {
    "lazy_lr0.06": {"lr": 0.06, "sparse_optimizer": "lazy"},
    "catch_up_lr0.01": {"lr": 0.01, "sparse_optimizer": "catch_up"},
    "catch_up_lr0.03": {"lr": 0.03, "sparse_optimizer": "catch_up"},
}


def step_ms(kind: str, late: bool, steps: int = 40) -> float:
    """Mean milliseconds of one zero_grad + backward + step on a 2^20 x 64 sparse table, 2,048 ids a batch."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(1 << 20, 64, sparse=True)
    opt = TowerOptimizer(table, lr=0.01, sparse_optimizer=kind)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 30_000, (2048,), generator=g) for _ in range(steps + 10)]
    t0 = time.perf_counter()
    for i, ids in enumerate(batches):
        if i == 10:
            if late and kind == "catch_up":  # as if SETTLED_STEP steps had passed with every row up to date
                st = opt.sparse.state[table.weight]  # type: ignore[union-attr]
                st["step"] += SETTLED_STEP
                st["last"] += SETTLED_STEP
            t0 = time.perf_counter()
        opt.zero_grad()
        table(ids).sum().backward()
        opt.step()
    return round((time.perf_counter() - t0) / steps * 1000, 2)


def main() -> None:
    torch.set_num_threads(2)
    import faiss

    faiss.omp_set_num_threads(1)
    t_start = time.perf_counter()
    G.prepare()
    ds = Dataset.open(G.WORK / "val_ds")
    split = G.Split(ds)
    arms: dict[str, Any] = {}
    for name, over in ARMS.items():
        cfg = G.tower_config(**{**BASE, **over}, epochs_initial=EPOCHS)
        r = G.train_with_curve(ds, split, cfg)
        arms[name] = {"params": over, "curve": r["curve"], "train_seconds": r["train_seconds"]}
        print(name, [p["recall_at_20"] for p in r["curve"]], flush=True)
    mf = G.mf_validation_curve(split, EPOCHS)
    arms["plain_mf"] = {
        "params": G.MF.to_json(),
        "curve": mf["curve"],
        "train_seconds": mf["train_seconds"],
    }
    steps = {
        f"{k}_{'late' if late else 'early'}_ms": step_ms(k, late)
        for k in ("lazy", "catch_up")
        for late in (False, True)
    }
    result = {
        "command": "python benchmarks/sparse_optimizer.py",
        "epochs": EPOCHS,
        "split": "gowalla.py's validation split (test.txt untouched)",
        "arms": arms,
        "val_recall_at_20_last_epoch": {k: a["curve"][-1]["recall_at_20"] for k, a in arms.items()},
        "step": {
            **steps,
            "table": "2^20 x 64, batches of 2,048 ids out of 30,000, 2 threads",
            "settled_step": SETTLED_STEP,
        },
        "load_average": list(os.getloadavg()),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    print(write_result("sparse_optimizer", result))


if __name__ == "__main__":
    main()
