"""Optimiser for models with large embedding tables: SparseAdam on the tables (sparse gradients touch only the
rows a batch uses), Adam on the dense weights. A dense Adam over 10^7 embedding rows costs far more per step
than the whole forward/backward pass on CPU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class TowerOptimizer:
    """SparseAdam for sparse `nn.Embedding` weights, Adam for everything else; one state_dict for both."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        weight_decay: float = 0.0,
        prefix_lr: Mapping[str, float] | None = None,
    ) -> None:
        """`prefix_lr`: learning rates of the dense parameters whose names start with a prefix (each prefix one
        Adam parameter group, e.g. {"wide.": 0.01}); every other parameter learns at `lr`."""
        sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
        sparse = [p for p in model.parameters() if id(p) in sparse_ids]
        prefix_lr = dict(prefix_lr or {})
        groups: dict[str, list[nn.Parameter]] = {"": [], **{k: [] for k in prefix_lr}}
        for name, p in model.named_parameters():
            if id(p) not in sparse_ids:
                groups[next((k for k in prefix_lr if name.startswith(k)), "")].append(p)
        param_groups: list[dict[str, Any]] = [{"params": groups[""]}]
        param_groups += [{"params": groups[k], "lr": prefix_lr[k]} for k in prefix_lr if groups[k]]
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr) if sparse else None
        self.dense = torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
        self._base_lrs = [float(g["lr"]) for g in self._groups()]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def _groups(self) -> list[dict[str, Any]]:
        return list(self.dense.param_groups) + (list(self.sparse.param_groups) if self.sparse else [])

    def set_lr_scale(self, scale: float) -> None:
        """Set every group's learning rate to `scale` times the configured one (1.0 restores it)."""
        for g, lr in zip(self._groups(), self._base_lrs, strict=True):
            g["lr"] = lr * scale

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict() if self.sparse else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None and state.get("sparse") is not None:
            self.sparse.load_state_dict(state["sparse"])
