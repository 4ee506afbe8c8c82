"""dermtrain.loop: the one training loop of the towers and the ranker, and its per-epoch hook (early stopping)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from dermcore.errors import DermError
from dermtrain.loop import EarlyStopping, run_epochs
from dermtrain.optim import TowerOptimizer

CPU = torch.device("cpu")
N, BS, LR = 64, 16, 0.05  # 4 steps an epoch


class Regression(nn.Module):
    """A task in the loop's sense: batch -> (loss, parts)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        mse = ((self.lin(b["x"]).squeeze(1) - b["y"]) ** 2).mean()
        return mse, {"mse": mse.item()}


def _setup(
    seed: int = 0,
) -> tuple[Regression, TowerOptimizer, Callable[[np.ndarray], dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(N, generator=g)
    torch.manual_seed(seed)
    task = Regression()

    def make_batch(idx: np.ndarray) -> dict[str, torch.Tensor]:
        i = torch.from_numpy(idx)
        return {"x": x[i], "y": y[i]}

    return task, TowerOptimizer(task, lr=LR), make_batch


def test_a_hook_stops_the_run_without_changing_the_steps_before() -> None:
    full_task, full_opt, mb = _setup()
    full = run_epochs(full_task, full_opt, mb, N, 5, BS, CPU, seed=3)
    task, opt, mb = _setup()
    lrs: list[float] = []
    snaps: dict[int, dict[str, torch.Tensor]] = {}

    def hook(epoch: int) -> bool:
        assert task.training  # called before the loop leaves train mode
        lrs.append(opt.dense.param_groups[0]["lr"])
        snaps[epoch] = {k: v.clone() for k, v in task.state_dict().items()}
        return epoch == 2

    calls: list[tuple[str, int, int]] = []
    st = run_epochs(task, opt, mb, N, 5, BS, CPU, lambda *a: calls.append(a), seed=3, on_epoch_end=hook)
    assert st["epochs"] == 2 and len(st["loss_by_epoch"]) == 2 and st["rows"] == N
    assert set(st["loss_by_epoch"][0]) == {"loss", "mse"} and "data_parallel" not in st
    assert st["loss_by_epoch"] == full["loss_by_epoch"][:2]  # same shuffle, same schedule up to the stop
    # the decay is planned over all 5 epochs (20 steps): after step 8 the scale is 1 - 0.9 * 7 / 19
    assert lrs == [pytest.approx(LR * (1 - 0.9 * 3 / 19)), pytest.approx(LR * (1 - 0.9 * 7 / 19))]
    assert calls == [("train", s, 20) for s in range(1, 9)]
    assert opt.dense.param_groups[0]["lr"] == LR and not task.training
    assert all(torch.equal(v, snaps[2][k]) for k, v in task.state_dict().items())


def test_a_hook_that_never_stops_leaves_the_weights_bit_identical() -> None:
    a_task, a_opt, mb = _setup()
    a = run_epochs(a_task, a_opt, mb, N, 3, BS, CPU, seed=7)
    b_task, b_opt, mb = _setup()
    b = run_epochs(b_task, b_opt, mb, N, 3, BS, CPU, seed=7, on_epoch_end=lambda e: False)
    assert a["loss_by_epoch"] == b["loss_by_epoch"] and a["epochs"] == b["epochs"] == 3
    assert all(torch.equal(v, b_task.state_dict()[k]) for k, v in a_task.state_dict().items())
    assert a["loss_by_epoch"][-1]["loss"] < a["loss_by_epoch"][0]["loss"]  # it does learn


def test_early_stopping_keeps_the_best_epoch() -> None:
    task, opt, mb = _setup()
    scripted = iter([3.0, 1.0, 2.0, 2.0, 0.0, 0.0])
    seen: dict[int, tuple[dict[str, torch.Tensor], dict]] = {}
    epoch = {"n": 0}

    def validate() -> float:
        epoch["n"] += 1
        task.eval()  # as the ranker's validation does; the loop puts it back in train mode
        seen[epoch["n"]] = ({k: v.clone() for k, v in task.state_dict().items()}, opt.state_dict())
        return next(scripted)

    stop = EarlyStopping(task, opt, validate, patience=2)
    st = run_epochs(task, opt, mb, N, 6, BS, CPU, seed=1, on_epoch_end=stop)
    assert st["epochs"] == 4  # epochs 3 and 4 did not beat epoch 2: patience 2 is spent
    assert stop.best_epoch == 2 and stop.history == [3.0, 1.0, 2.0, 2.0]
    assert not any(torch.equal(v, seen[2][0][k]) for k, v in task.state_dict().items() if k == "lin.weight")
    stop.restore()
    assert all(torch.equal(v, seen[2][0][k]) for k, v in task.state_dict().items())
    step = opt.state_dict()["dense"]["state"][0]["step"]
    assert float(step) == 8.0  # the optimiser state of epoch 2 (4 steps an epoch), not of epoch 4
    with pytest.raises(DermError, match="patience"):
        EarlyStopping(task, opt, validate, patience=0)


def test_a_non_finite_loss_names_the_run() -> None:
    task, opt, _ = _setup()

    def bad(idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {"x": torch.full((len(idx), 3), float("nan")), "y": torch.zeros(len(idx))}

    with pytest.raises(DermError, match="^ranker training diverged: loss is not finite$"):
        run_epochs(task, opt, bad, N, 1, BS, CPU, what="ranker training")
    with pytest.raises(DermError, match="no impressions to train on"):
        run_epochs(task, opt, bad, 0, 1, BS, CPU)
