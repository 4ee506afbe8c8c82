"""dermtrain.optim: the catch-up sparse Adam moves embedding rows as dense Adam does, at sparse cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dermcore.errors import ConfigError
from dermtrain.optim import TowerOptimizer
from towers.config import TowerConfig


def _train(
    kind: str, steps: int = 300, state: dict | None = None, start: int = 0
) -> tuple[nn.Embedding, TowerOptimizer]:
    """A 40 x 3 table pulled towards a noisy target by batches of 4 random rows (the noise keeps gradients and
    Adam's second moments away from 0, where eps would dominate); `kind` picks the optimiser (`dense` = torch
    Adam on a dense table)."""
    torch.manual_seed(0)
    target = torch.randn(40, 3)
    table = nn.Embedding(40, 3, sparse=kind != "dense")
    nn.init.normal_(table.weight, 0.0, 0.1)
    opt = TowerOptimizer(table, lr=0.02, sparse_optimizer="lazy" if kind == "dense" else kind)
    g = torch.Generator().manual_seed(1)
    draws = [(torch.randint(0, 40, (4,), generator=g), torch.randn(4, 3, generator=g)) for _ in range(steps)]
    if state is not None:
        table.load_state_dict(state["table"])
        opt.load_state_dict(state["opt"])
    for idx, eps in draws[start:]:
        opt.zero_grad()
        ((table(idx) - target[idx] - eps) ** 2).sum().backward()
        opt.step()
    opt.flush()
    return table, opt


def test_catch_up_matches_dense_adam_where_sparse_adam_does_not() -> None:
    dense, _ = _train("dense")
    catch_up, _ = _train("catch_up")
    lazy, _ = _train("lazy")
    assert (catch_up.weight - dense.weight).abs().max().item() < 1e-4
    assert (lazy.weight - dense.weight).abs().max().item() > 0.05  # the gap the catch-up closes


def test_catch_up_matches_dense_adam_once_bias_corrections_settle() -> None:
    """Past `SETTLED_STEP` steps the catch-up takes the one-sum path; it still tracks dense Adam."""
    from dermtrain.optim import SETTLED_STEP

    steps = SETTLED_STEP + 400
    dense, _ = _train("dense", steps=steps)
    catch_up, _ = _train("catch_up", steps=steps)
    lazy, _ = _train("lazy", steps=steps)
    assert (catch_up.weight - dense.weight).abs().max().item() < 1e-4
    assert (lazy.weight - dense.weight).abs().max().item() > 0.05


def test_catch_up_state_round_trips_mid_training() -> None:
    whole, _ = _train("catch_up", steps=200)
    half_table, half_opt = _train("catch_up", steps=120)
    # continue from the saved state (flushed at the save, as run_epochs does at an epoch's end)
    state = {"table": half_table.state_dict(), "opt": half_opt.state_dict()}
    resumed, _ = _train("catch_up", steps=200, state=state, start=120)
    assert torch.allclose(resumed.weight, whole.weight, atol=1e-5)


def test_a_lazy_state_loads_into_the_catch_up_optimiser() -> None:
    lazy_table, lazy_opt = _train("lazy", steps=50)
    table = nn.Embedding(40, 3, sparse=True)
    table.load_state_dict(lazy_table.state_dict())
    opt = TowerOptimizer(table, lr=0.02, sparse_optimizer="catch_up")
    opt.load_state_dict(lazy_opt.state_dict())
    before = table.weight.detach().clone()
    opt.flush()  # every row counts as up to date: nothing moves
    assert torch.equal(table.weight, before)
    opt.zero_grad()
    table(torch.tensor([3, 5])).sum().backward()
    opt.step()
    moved = (table.weight - before).abs().sum(1) > 0
    assert moved.nonzero().squeeze(1).tolist() == [3, 5]


def test_unknown_sparse_optimizer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sparse_optimizer"):
        TowerConfig(sparse_optimizer="momentum")


def test_a_new_optimiser_replaces_the_tables_catch_up_hook() -> None:
    """Only the newest optimiser of a model catches its rows up: an older one's hook is removed."""
    table = nn.Embedding(10, 2, sparse=True)
    TowerOptimizer(table, lr=0.02, sparse_optimizer="catch_up")
    assert len(table._forward_pre_hooks) == 1
    TowerOptimizer(table, lr=0.02, sparse_optimizer="catch_up")
    assert len(table._forward_pre_hooks) == 1
    TowerOptimizer(table, lr=0.02, sparse_optimizer="lazy")
    assert len(table._forward_pre_hooks) == 0


def test_flush_skips_rows_never_updated() -> None:
    """A row no batch has used has zero moments: the catch-up leaves it (and its step) alone, so a flush costs
    the rows trained, not the table's size."""
    table, opt = _train("catch_up", steps=30)
    used = set()
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        used |= set(torch.randint(0, 40, (4,), generator=g).tolist())
        torch.randn(4, 3, generator=g)
    unused = sorted(set(range(40)) - used)
    assert unused  # 30 batches of 4 leave some of the 40 rows untouched
    st = opt.sparse.state[table.weight]
    assert st["last"][unused].eq(0).all() and st["last"][sorted(used)].eq(30).all()
    torch.manual_seed(0)
    torch.randn(40, 3)  # _train's target
    fresh = nn.Embedding(40, 3, sparse=True)
    nn.init.normal_(fresh.weight, 0.0, 0.1)
    assert torch.equal(table.weight[unused], fresh.weight[unused])  # never moved
