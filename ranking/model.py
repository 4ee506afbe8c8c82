"""The downstream ranker (foundation form): a multi-task MLP over the user's and ad's features, context, the
user's activity sequence and the DERM embeddings chosen by config. Heads: CTR (all impressions) and CVR
(post-click). It shares `towers.features` / `towers.batches` with the upstream model, so training and serving
build inputs through one code path. The mixture of DCNv2 experts of issue 6 replaces `self.mlp`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from towers.features import FeatureSpec
from towers.model import FieldEncoder, SequenceEncoder, mlp

DERM_INPUTS = ("ctr-user", "ctr-ad", "cvr-user", "cvr-ad")


@dataclass(frozen=True)
class RankerConfig:
    derm_inputs: tuple[str, ...] = ("ctr-user", "ctr-ad")
    token_dim: int = 16
    hidden: tuple[int, ...] = (256, 128)
    batch_size: int = 4096
    lr: float = 2e-3
    epochs_initial: int = 2
    epochs_incremental: int = 1
    seq_len: int = 20
    id_buckets: int = 1 << 17
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [d for d in self.derm_inputs if d not in DERM_INPUTS]
        if bad:
            raise ValueError(f"unknown DERM inputs {bad}; choose from {DERM_INPUTS}")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["derm_inputs"] = list(self.derm_inputs)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RankerConfig:
        d = dict(d)
        d["derm_inputs"] = tuple(d["derm_inputs"])
        d["hidden"] = tuple(d["hidden"])
        return cls(**d)


class Ranker(nn.Module):
    """Inputs: the batch of `towers.batches.Inputs.impression_batch` plus `derm_<input>` float32 (B, dim) for
    each configured DERM input (zeros, with `derm_<input>_found` = 0, where the entity had no embedding).
    Output: logits (B, 2) = (ctr, cvr)."""

    def __init__(self, spec: FeatureSpec, cfg: RankerConfig, derm_dim: int) -> None:
        super().__init__()
        c = cfg.token_dim
        self.cfg = cfg
        self.user = FieldEncoder(spec, "user", c)
        self.ad = FieldEncoder(spec, "ad", c)
        n_cat = next((f.size for f in spec.ad if f.name == spec.ad_category), 1)
        self.sequence = SequenceEncoder(spec, c, n_cat)
        self.ctx = nn.ModuleList(nn.Embedding(f.size, c, sparse=True) for f in spec.context)
        n_derm = len(cfg.derm_inputs)
        n_dots = sum(
            1 for t in ("ctr", "cvr") if f"{t}-user" in cfg.derm_inputs and f"{t}-ad" in cfg.derm_inputs
        )
        width = (self.user.n_tokens + self.ad.n_tokens + 1 + len(spec.context)) * c
        width += n_derm * (derm_dim + 1) + n_dots
        self.mlp = mlp([width, *cfg.hidden, 2])

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [
            self.user(b["user_cat"], b["user_num"], b["user_dense"]).flatten(1),
            self.ad(b["ad_cat"], b["ad_num"], b["ad_dense"]).flatten(1),
            self.sequence(b).flatten(1),
        ]
        parts += [e(b["ctx"][:, j]) for j, e in enumerate(self.ctx)]
        for name in self.cfg.derm_inputs:
            parts += [b[f"derm_{name}"], b[f"derm_{name}_found"].unsqueeze(1)]
        for t in ("ctr", "cvr"):
            if f"{t}-user" in self.cfg.derm_inputs and f"{t}-ad" in self.cfg.derm_inputs:
                parts.append((b[f"derm_{t}-user"] * b[f"derm_{t}-ad"]).sum(1, keepdim=True))
        return self.mlp(torch.cat(parts, dim=1))
