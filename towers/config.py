"""The upstream model's one frozen config. Defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Task(StrEnum):
    """Which engagement the model's contrastive pairs come from: clicks (CTR model) or conversions (CVR)."""

    CTR = "ctr"
    CVR = "cvr"


@dataclass(frozen=True)
class TowerConfig:
    task: Task = Task.CTR
    dim: int = 64  # embedding width shared by the user and Pin towers
    token_dim: int = 32  # width C of each feature token
    hidden: tuple[int, ...] = (256,)
    id_buckets: int = 1 << 17
    seq_len: int = 20
    batch_size: int = 2048
    lr: float = 2e-3
    weight_decay: float = 0.0
    epochs_initial: int = 2
    epochs_incremental: int = 2
    weight_ctr: float = 1.0
    weight_cvr: float = 1.0
    weight_contrastive: float = 1.0
    logq: bool = True
    logq_decay: float = 0.99
    temperature_init: float = 0.1
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # recorded, never interpreted

    def __post_init__(self) -> None:
        if self.dim < 2 or self.token_dim < 1:
            raise ValueError("dim and token_dim must be positive")
        if self.id_buckets < 2:
            raise ValueError("id_buckets must be >= 2")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (in-batch negatives)")
        if self.lr <= 0 or not 0 < self.logq_decay < 1:
            raise ValueError("lr must be > 0 and logq_decay in (0, 1)")
        if not 0.01 <= self.temperature_init <= 1:
            raise ValueError("temperature_init must be in [0.01, 1]")
        if min(self.weight_ctr, self.weight_cvr, self.weight_contrastive) < 0:
            raise ValueError("loss weights must be >= 0")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["task"] = self.task.value
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TowerConfig:
        d = dict(d)
        d["task"] = Task(d["task"])
        d["hidden"] = tuple(d["hidden"])
        return cls(**d)
