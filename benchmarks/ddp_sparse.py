"""Sparse or dense id tables under DDP: the step time of two gloo workers with the towers' table shapes.

The decision behind `dermtrain.parallel` (sparse gradients kept under DDP): each worker steps a model of
`TABLES` id tables of the default size (2^17 buckets x 32, `TowerConfig.id_buckets` / `token_dim`) and a small
MLP on a local batch of 1,024 ids per table drawn from a Zipf law, under DistributedDataParallel (gloo,
2 processes, one thread each). Sparse: `nn.Embedding(sparse=True)` + SparseAdam (DDP all-gathers the touched
rows). Dense: `sparse=False` + Adam (DDP all-reduces every row of every table). Median seconds per step
(forward, backward with the all-reduce, optimiser step) over the measured steps, after warm-up steps.

Writes benchmarks/results/ddp_sparse.json. Usage: python benchmarks/ddp_sparse.py
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Any

from common import write_result

TABLES, ROWS, DIM, BATCH = 4, 1 << 17, 32, 1024
WARMUP, STEPS = 3, 15


def _worker(rank: int, world: int, store: str, sparse: bool, out: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    tables = nn.ModuleList(nn.Embedding(ROWS, DIM, sparse=sparse) for _ in range(TABLES))
    mlp = nn.Sequential(nn.Linear(TABLES * DIM, 64), nn.ReLU(), nn.Linear(64, 1))
    model = nn.ModuleDict({"tables": tables, "mlp": mlp})

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = torch.cat([t(ids[:, i]) for i, t in enumerate(self.m["tables"])], dim=1)
            return self.m["mlp"](x).pow(2).mean()

    net = nn.parallel.DistributedDataParallel(Net())
    if sparse:
        opts: list[Any] = [
            torch.optim.SparseAdam(list(tables.parameters()), lr=1e-3),
            torch.optim.Adam(mlp.parameters(), lr=1e-3),
        ]
    else:
        opts = [torch.optim.Adam(model.parameters(), lr=1e-3)]
    rng = np.random.default_rng(rank)
    times = []
    for step in range(WARMUP + STEPS):
        ids = torch.from_numpy((rng.zipf(1.2, (BATCH, TABLES)) % ROWS).astype(np.int64))
        t0 = time.perf_counter()
        loss = net(ids)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"median_step_seconds": statistics.median(times), "steps": len(times)}, f)
    dist.destroy_process_group()


def measure(sparse: bool, world: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        mp.spawn(_worker, args=(world, os.path.join(tmp, "store"), sparse, out), nprocs=world, join=True)
        with open(out) as f:
            r: dict[str, Any] = json.load(f)
    return r


def main() -> None:
    load = os.getloadavg()
    res = {name: measure(name == "sparse", 2) for name in ("sparse", "dense")}
    s, d = res["sparse"]["median_step_seconds"], res["dense"]["median_step_seconds"]
    result = {
        "command": "python benchmarks/ddp_sparse.py",
        "workers": 2,
        "backend": "gloo",
        "tables": TABLES,
        "rows_per_table": ROWS,
        "dim": DIM,
        "local_batch": BATCH,
        "sparse": res["sparse"],
        "dense": res["dense"],
        "dense_over_sparse": round(d / s, 2),
        "load_average_start": [round(x, 2) for x in load],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    write_result("ddp_sparse", result)
    print(json.dumps({"sparse_s": s, "dense_s": d, "dense_over_sparse": result["dense_over_sparse"]}))


if __name__ == "__main__":
    main()
