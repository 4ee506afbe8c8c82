"""Data-parallel training: what one worker of a torch.distributed group changes in the one training loop.

`dermtrain.loop.run_epochs` (the one loop of the towers and, through `ranking.train.fit`, the ranker) takes an
optional `DataParallel`; with one, it runs the same loop on this worker's shard of the rows, with the module
wrapped in `torch.nn.parallel.DistributedDataParallel`. There is no second loop: a group of one worker takes exactly
the single-process steps (same rows, same order, same learning-rate schedule), so its weights equal the
single-process ones (tested). Who starts the workers and the process group is the launcher's job
(`dermdist.train`: Ray Train's `TorchTrainer`); this module only reads the initialised group.

Rules, each chosen so that W workers train what one process would, W times faster per step:
- rows: row r of the training days' impressions (in the dataset's order: by day, then ts as written) belongs
  to worker r % W. Deterministic, balanced to one row, independent of the ids.
- batch: the config's `batch_size` is the global batch; each worker takes batch_size // W rows per step, and
  DDP averages the gradients, so a step sees batch_size rows and the steps per epoch (and so the
  learning-rate decay) are those of one process. Every worker runs the same number of steps (the minimum
  over the group: a worker that stepped once more would wait for ever in the gradient all-reduce).
- shuffle: worker w permutes its rows with seed + w (worker 0 keeps the single-process seed).
- in-batch negatives: the towers' sampled softmax and its logQ estimate (`CandidateFrequency`, a buffer that
  DDP must not overwrite from worker 0: `broadcast_buffers=False`) work on each worker's local batch, so a
  positive meets batch_size // W - 1 negatives instead of batch_size - 1; the snapshot keeps worker 0's
  estimate (the workers' batches are drawn alike, so their estimates estimate the same Q).
- sparse gradients: the id tables keep sparse gradients and SparseAdam under DDP (an all-gather of the
  touched rows: its cost grows with the rows a batch touches, not with the tables); dense tables would
  all-reduce every row of every table each step (the default 2^17-bucket tables are ~16 MB a table a step)
  and lose SparseAdam's lazy moments (see `TowerConfig.sparse_embeddings`). Measured
  (`benchmarks/ddp_sparse.py`: 2 gloo workers, 4 tables of 2^17 x 32, local batch 1,024, 2 shared cores):
  0.028 s a step sparse, 0.43 s dense (15.5x). DDP does not reduce the sparse tables itself: torch 2.13's
  gloo sparse all-reduce runs on the process group's two worker threads, and with the towers' ~10 sparse
  tables two of them coalesced gradients at once and corrupted the heap ("malloc(): unaligned tcache chunk
  detected", SIGABRT in `AsyncSparseAllreduceWork` on both `pt_gloo_runloop` threads, seen under gdb; the
  default cycle on a 100k-impression day crashed at its 23rd step every run). The tables are excluded from
  DDP and `sync_sparse_grads` all-gathers their coalesced rows on the training thread after backward, one
  table at a time, in the same order on every worker. NCCL is refused for sparse tables (untested path): on
  CUDA the group must be gloo, or the model must have dense tables (`towers.sparse_embeddings = false`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dermcore.errors import DermError


@dataclass(frozen=True)
class DataParallel:
    """This worker's place in an initialised torch.distributed group: `rank` in 0..world-1."""

    rank: int
    world: int

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise DermError(f"data-parallel rank {self.rank} is outside a group of {self.world}")

    @classmethod
    def from_group(cls) -> DataParallel:
        """The default process group's rank and size; DermError when none is initialised."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise DermError("data-parallel training needs an initialised torch.distributed process group")
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def chief(self) -> bool:
        """Worker 0 publishes the artifact; the others only train."""
        return self.rank == 0

    def rows(self, n: int) -> np.ndarray:
        """This worker's rows of n: int64 indices r with r % world == rank, ascending."""
        return np.arange(self.rank, n, self.world, dtype=np.int64)

    def local_batch(self, batch_size: int) -> int:
        return max(1, batch_size // self.world)

    def steps(self, n_local: int, local_batch: int) -> int:
        """Steps per epoch: the group's minimum of max(1, n_local // local_batch) (a collective call)."""
        import torch.distributed as dist

        mine = torch.tensor([max(1, n_local // local_batch)], dtype=torch.int64)
        if self.world > 1:
            dist.all_reduce(mine, op=dist.ReduceOp.MIN)
        return int(mine.item())

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` under DistributedDataParallel (parameters are not copied: the caller's optimiser still
        steps them), its sparse id tables excluded (`sparse_tables`: synchronised by `sync_sparse_grads`).
        Worker 0's parameters are broadcast to the group here (the tables too); buffers never are."""
        import torch.distributed as dist

        tables = sparse_tables(module)
        if tables and dist.get_backend() == "nccl":
            raise DermError(
                "NCCL cannot all-reduce the sparse gradients of the id tables: train the data-parallel "
                "workers on CPU (gloo) or set towers.sparse_embeddings = false"
            )
        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: a batch with no positive skips the sampled softmax (and so the temperature).
        # broadcast_buffers=False keeps each worker's logQ estimate its own; torch 2.13 deprecates the name but
        # its replacement still syncs buffers at init, and says to keep this one until `init_sync_buffers`.
        if tables:
            for _, p in tables:  # DDP's broadcast of worker 0's parameters skips ignored ones: done here
                dist.broadcast(p.data, src=0)
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                module, [name for name, _ in tables]
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            return nn.parallel.DistributedDataParallel(
                module, device_ids=ids, broadcast_buffers=False, find_unused_parameters=True
            )


def sparse_tables(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every `nn.Embedding(sparse=True)` in `module`, in `named_parameters` order."""
    ids = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding) and m.sparse}
    return [(n, p) for n, p in module.named_parameters() if id(p) in ids]


def sync_sparse_grads(tables: list[tuple[str, nn.Parameter]], world: int) -> None:
    """Replace each table's sparse gradient by the group's mean (what DDP does to a dense gradient): the
    coalesced rows of every worker are all-gathered (padded to the longest; a table without a gradient on a
    worker counts as no rows) and summed, divided by `world`. A collective call: every worker calls it with
    the same tables in the same order after each backward."""
    import torch.distributed as dist

    if not tables:
        return
    grads = []
    for name, p in tables:
        g = p.grad
        if g is not None and not g.is_sparse:
            raise RuntimeError(f"{name}: a sparse id table got a dense gradient")  # a bug, not bad input
        if g is None:
            g = torch.sparse_coo_tensor(
                torch.zeros((1, 0), dtype=torch.int64, device=p.device),
                p.new_zeros((0, *p.shape[1:])),
                p.shape,
                check_invariants=True,
            )
        grads.append(g.coalesce())
    counts = torch.tensor(
        [g.indices().shape[1] for g in grads], dtype=torch.int64, device=tables[0][1].device
    )
    every = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(every, counts)
    per = torch.stack(every)  # (world, tables)
    for t, ((_, p), g) in enumerate(zip(tables, grads, strict=True)):
        n_max = int(per[:, t].max())
        if n_max == 0:
            p.grad = None
            continue
        idx, val = g.indices()[0], g.values()
        pad = n_max - idx.shape[0]
        idx = torch.cat([idx, idx.new_zeros(pad)])
        val = torch.cat([val, val.new_zeros((pad, *val.shape[1:]))])
        all_idx = [torch.empty_like(idx) for _ in range(world)]
        all_val = [torch.empty_like(val) for _ in range(world)]
        dist.all_gather(all_idx, idx)
        dist.all_gather(all_val, val)
        keep = [int(c) for c in per[:, t]]
        i = torch.cat([x[:k] for x, k in zip(all_idx, keep, strict=True)])
        v = torch.cat([x[:k] for x, k in zip(all_val, keep, strict=True)]) / world
        # rows from other processes: checked against the table's shape (O(rows); a bad index is an error, not
        # a heap corruption)
        p.grad = torch.sparse_coo_tensor(i.unsqueeze(0), v, p.shape, check_invariants=True).coalesce()


def training_plan(
    parallel: DataParallel | None,
    task: nn.Module,
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[nn.Module, int, int, int, Callable[[], None]]:
    """What a training loop over n rows steps: (the module to call, the local batch size, steps per epoch, the
    shuffle seed, what to call after each backward). One process: (task, batch_size, n // batch_size (>= 1),
    seed, nothing). Data-parallel: `task` under DDP, this worker's share of the global batch, the steps every
    worker runs, seed + rank, and `sync_sparse_grads` over the sparse tables DDP leaves out."""
    if parallel is None:
        return task, batch_size, max(1, n // batch_size), seed, lambda: None
    local = parallel.local_batch(batch_size)
    tables = sparse_tables(task)
    return (
        parallel.wrap(task, device),
        local,
        parallel.steps(n, local),
        seed + parallel.rank,
        lambda: sync_sparse_grads(tables, parallel.world),
    )
