"""The one training loop of the upstream towers (`towers.train.train_towers`) and the downstream ranker
(`ranking.train.fit`): shuffled epochs over rows 0..n-1, a finite-loss check, the linear learning-rate decay to
10 %, progress and throughput, and an optional per-epoch hook (`EarlyStopping`: validation loss, patience, the
best epoch's weights and optimiser state). The model / training task / export split follows torchrec's
`TwoTower` / `TwoTowerTrainTask`: a task is any module that maps a batch to (loss, parts)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from dermcore.errors import DermError
from dermcore.faults import crash_point
from dermcore.progress import Progress, no_progress
from dermfeatures.batches import to_device
from dermtrain.optim import TowerOptimizer
from dermtrain.parallel import DataParallel, training_plan

#: called after each epoch with its number (1-based) once the epoch's weights are flushed; True stops training
EpochEnd = Callable[[int], bool]


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DermError("--device cuda: no CUDA device is available to torch on this machine")
    if device not in ("cpu", "cuda"):
        raise DermError(f"unknown device {device!r} (choose auto, cpu or cuda)")
    return torch.device(device)


class EarlyStopping:
    """An `EpochEnd` hook: after each epoch, `validate()` gives a loss (lower is better); training stops once
    `patience` epochs have passed without a new best, and `restore()` puts back the best epoch's weights of
    `model` and state of `optimizer` (deep copies taken when it was reached). Every data-parallel worker
    validates the same rows with the same weights, so all take the same decision."""

    def __init__(
        self, model: nn.Module, optimizer: TowerOptimizer, validate: Callable[[], float], patience: int
    ) -> None:
        if patience < 1:
            raise DermError(f"early stopping patience must be >= 1, got {patience}")
        self.model = model
        self.optimizer = optimizer
        self.validate = validate
        self.patience = patience
        #: validation loss after each epoch, rounded to 6 places (what the manifest reports)
        self.history: list[float] = []
        self._best: tuple[float, int, dict[str, Any], dict[str, Any]] | None = None

    @property
    def best_epoch(self) -> int | None:
        """The epoch (1-based) with the lowest validation loss so far; None before the first epoch."""
        return None if self._best is None else self._best[1]

    def __call__(self, epoch: int) -> bool:
        loss = self.validate()
        self.history.append(round(loss, 6))
        if self._best is None or loss < self._best[0]:
            state = copy.deepcopy(self.model.state_dict())
            self._best = (loss, epoch, state, copy.deepcopy(self.optimizer.state_dict()))
            return False
        return epoch - self._best[1] >= self.patience

    def restore(self) -> None:
        """Load the best epoch's weights and optimiser state (no-op before the first epoch)."""
        if self._best is not None:
            self.model.load_state_dict(self._best[2])
            self.optimizer.load_state_dict(self._best[3])


def run_epochs(
    task: nn.Module,
    optimizer: TowerOptimizer,
    make_batch: Callable[[np.ndarray], dict[str, torch.Tensor]],
    n: int,
    epochs: int,
    batch_size: int,
    device: torch.device,
    progress: Progress = no_progress,
    seed: int = 0,
    crash_detail: str | None = "",
    parallel: DataParallel | None = None,
    *,
    on_epoch_end: EpochEnd | None = None,
    label: str = "train",
    what: str = "training",
) -> dict[str, Any]:
    """Train `task` (a module returning (loss, parts)) for up to `epochs` shuffled passes over rows 0..n-1;
    `make_batch(row_indices int64[b])` builds each batch. Returns {"epochs" (run), "rows", "seconds" (training
    only, hooks excluded), "samples_per_second", "loss_by_epoch": [{"loss", *parts} per epoch], and with
    `parallel` "data_parallel"}; `task` is left in eval mode at the learning rate scale 1.

    The shuffle draws one permutation per epoch from `default_rng(seed)`; the learning rate decays linearly
    over the planned steps (`epochs` full epochs), so stopping early does not change the steps taken before.
    `on_epoch_end(epoch)` runs after each epoch (weights flushed); True stops. `crash_detail`: the detail of
    the `train` crash point after the first step (`dermcore.faults`; None: no crash point). `label`: the
    progress label; `what`: names the run in the divergence error.

    `parallel`: this process is one worker of a data-parallel group (`dermtrain.parallel`); rows 0..n-1 are
    then this worker's shard, `batch_size` is the global batch and `task` is stepped under DDP."""
    if n == 0:
        raise DermError("no impressions to train on")
    forward, batch_size, steps_per_epoch, seed, sync = training_plan(
        parallel, task, n, batch_size, seed, device
    )
    rng = np.random.default_rng(seed)
    total = steps_per_epoch * epochs
    # Linear decay to 10 % of the learning rate over the run: with rare positive labels, a constant Adam step
    # leaves the output bias oscillating, and the probabilities of the final weights were off by 30 % on the
    # training days themselves (calibration is a stated property of the ranker).
    step = 0
    secs = 0.0
    hist: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        task.train()  # a hook may have left it in eval mode
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        run: dict[str, float] = {}
        for s in range(steps_per_epoch):
            batch = to_device(make_batch(perm[s * batch_size : (s + 1) * batch_size]), device)
            loss, parts = forward(batch)
            if not torch.isfinite(loss):
                raise DermError(f"{what} diverged: loss is not finite")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sync()  # data-parallel: the sparse tables' gradients (DDP averages the dense ones)
            optimizer.set_lr_scale(1.0 - 0.9 * step / max(total - 1, 1))
            optimizer.step()
            for k, v in {"loss": loss.item(), **parts}.items():
                run[k] = run.get(k, 0.0) + v
            step += 1
            if s == steps_per_epoch - 1:
                optimizer.flush()  # every embedding row up to date before anyone reads the weights
            if step == 1 and crash_detail is not None:
                crash_point("train", crash_detail)
            progress(label, step, total)
        secs += time.perf_counter() - t0
        hist.append({k: round(v / steps_per_epoch, 6) for k, v in run.items()})
        if on_epoch_end is not None and on_epoch_end(epoch):
            break
    optimizer.set_lr_scale(1.0)
    task.eval()
    done = len(hist)
    world = parallel.world if parallel is not None else 1
    out: dict[str, Any] = {
        "epochs": done,
        "rows": n,
        "seconds": round(secs, 3),
        # the group's rate (every worker steps batch_size rows at once)
        "samples_per_second": round(steps_per_epoch * batch_size * world * done / max(secs, 1e-9), 1),
        "loss_by_epoch": hist,
    }
    if parallel is not None:
        out["data_parallel"] = {"workers": world, "rank": parallel.rank, "local_batch": batch_size}
    return out
