"""The upstream model's one frozen config. Defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from dermcore.errors import ConfigError


class Task(StrEnum):
    """Which engagement the model's contrastive pairs come from: clicks (CTR model) or conversions (CVR)."""

    CTR = "ctr"
    CVR = "cvr"


class Backbone(StrEnum):
    """What mixes an entity tower's feature tokens: the DHEN stack of the DERM paper, or the foundation's MLP
    over the flattened tokens (kept unchanged for ablations and ids-only benchmarks)."""

    DHEN = "dhen"
    MLP = "mlp"
    #: the embedding is the sum of the feature tokens (token_dim must equal dim): no projection. With one id
    #: token per entity this is matrix factorisation; with several, a bag of embeddings
    SUM = "sum"


class DhenModule(StrEnum):
    """The interaction modules a DHEN layer can ensemble (`towers.dhen`)."""

    MASKNET = "masknet"
    TRANSFORMER = "transformer"
    MLP = "mlp"


@dataclass(frozen=True)
class TowerConfig:
    task: Task = Task.CTR
    dim: int = 64  # embedding width shared by the user and Pin towers
    token_dim: int = 32  # width C of each feature token
    hidden: tuple[int, ...] = (256,)  # the interaction tower's MLP, and the towers' MLP when backbone is mlp
    # DHEN: each tower emits dim / token_dim tokens of width C; `dhen_layers` layers, each ensembling the two
    # `dhen_modules`; `dhen_hidden` is the width of the MaskNet mask / MLP module hidden layer and of the
    # Transformer's feed-forward; `dhen_heads` attention heads (must divide token_dim).
    backbone: Backbone = Backbone.DHEN
    dhen_layers: int = 2
    dhen_modules: tuple[DhenModule, ...] = (DhenModule.MASKNET, DhenModule.TRANSFORMER)
    dhen_hidden: int = 64
    dhen_heads: int = 2
    id_buckets: int = 1 << 17  # cap on any id table's buckets
    id_bucket_factor: int = (
        2  # buckets per known id (next power of two), see dermfeatures.spec.id_bucket_count
    )
    # std of the normal init of the id / categorical embedding tables; None keeps torch's N(0, 1). SparseAdam
    # moves a row by about lr per appearance, so with N(0, 1) rarely seen ids stay near their random start for
    # many epochs (Gowalla, ids only: validation recall@20 after one epoch 0.0258 with N(0, 1) vs 0.0670 with
    # std 0.05 at lr 0.01)
    embedding_init_std: float | None = None
    # True: the id tables take sparse gradients and SparseAdam (only the rows a batch uses are touched: the
    # cost of a step does not grow with the tables). False: dense gradients and Adam for every parameter, whose
    # moments keep moving a row for ~1 / (1 - beta1) steps after it was seen; SparseAdam's lazy moments move a
    # rarely seen row about 10x less per appearance (Gowalla, plain MF: validation recall@20 0.1645 with
    # SparseAdam vs 0.2021 with Adam after 8 epochs). Dense costs a pass over every table per step.
    sparse_embeddings: bool = True
    # the sparse tables' optimiser (dermtrain.optim): "lazy" = torch's SparseAdam (rows absent from a batch
    # stand still); "catch_up" = CatchUpAdam, rows move as under dense Adam (to float error) at sparse cost
    sparse_optimizer: str = "lazy"
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
    #: mixed negative sampling (Yang et al., WWW 2020): besides the batch's own ads, this many ads drawn
    #: uniformly (with replacement) from the distinct ads of the training rows join every batch's softmax as
    #: negatives, through the Pin tower. Each candidate column is corrected by log of its ad's expected count
    #: in the candidate set (the streaming in-batch estimate plus extra_negatives / number of ads), so the
    #: two samples share one logQ. 0 = in-batch negatives only (the DERM paper's setting)
    extra_negatives: int = 0
    # the softmax temperature is trained (the DERM default); False keeps it at temperature_init. Ids-only
    # Gowalla: the learned temperature fell to 0.03 within 6 epochs and validation recall@20 peaked at epoch 3
    # (0.131) then fell, while a fixed 0.1 kept rising (0.150 at epoch 4)
    learn_temperature: bool = True
    #: negative downsampling of the training rows (`dermfeatures.batches.Inputs.impressions`): every impression
    #: with a click or conversion is kept, every other with this probability and weight 1 / rate in the CTR loss
    #: (1.0: every row, the default). The contrastive loss reads only the positives, which are all kept; the
    #: batches hold more of them, and an epoch takes ~rate + click rate as many steps. On downsampling.json's
    #: synthetic days at 0.1: after a daily increment retrieval recall@100 -0.004 [-0.019, +0.011] against
    #: every row at 7x less training time; from scratch with one epoch (8x fewer steps) it halved (0.286 ->
    #: 0.133), so a from-scratch fit needs more epochs (epochs_initial) at a low rate
    negative_rate: float = 1.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # recorded, never interpreted

    def __post_init__(self) -> None:
        # accept the JSON spellings (str, list) too, so `TowerConfig(**cfg.to_json())` round-trips
        object.__setattr__(self, "task", Task(self.task))
        object.__setattr__(self, "backbone", Backbone(self.backbone))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "dhen_modules", tuple(DhenModule(m) for m in self.dhen_modules))
        if self.dim < 2 or self.token_dim < 1:
            raise ConfigError("dim and token_dim must be positive")
        if self.embedding_init_std is not None and not self.embedding_init_std > 0:
            raise ConfigError("embedding_init_std must be > 0 (or None for torch's default N(0, 1))")
        from dermtrain.optim import SPARSE_OPTIMIZERS

        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ConfigError(f"sparse_optimizer must be one of {', '.join(SPARSE_OPTIMIZERS)}")
        if self.id_bucket_factor < 1:
            raise ConfigError("id_bucket_factor must be >= 1")
        if self.id_buckets < 2:
            raise ConfigError("id_buckets must be >= 2")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (in-batch negatives)")
        if self.extra_negatives < 0:
            raise ConfigError("extra_negatives must be >= 0")
        if not 0 < self.negative_rate <= 1:
            raise ConfigError(f"negative_rate must be in (0, 1], got {self.negative_rate}")
        if self.backbone is Backbone.SUM and self.token_dim != self.dim:
            raise ConfigError(
                f"backbone sum: token_dim ({self.token_dim}) must equal dim ({self.dim}): the embedding is the "
                "sum of the tokens"
            )
        if self.lr <= 0 or not 0 < self.logq_decay < 1:
            raise ConfigError("lr must be > 0 and logq_decay in (0, 1)")
        if not 0.01 <= self.temperature_init <= 1:
            raise ConfigError("temperature_init must be in [0.01, 1]")
        if min(self.weight_ctr, self.weight_cvr, self.weight_contrastive) < 0:
            raise ConfigError("loss weights must be >= 0")
        if self.backbone is Backbone.DHEN:
            if self.dim % self.token_dim:
                raise ConfigError(
                    f"backbone dhen: dim ({self.dim}) must be a multiple of token_dim ({self.token_dim}); "
                    "the tower emits dim / token_dim tokens"
                )
            if self.dhen_layers < 1 or self.dhen_hidden < 1:
                raise ConfigError("dhen_layers and dhen_hidden must be >= 1")
            if len(self.dhen_modules) != 2:
                raise ConfigError("dhen_modules must name two modules (masknet, transformer or mlp)")
            if DhenModule.TRANSFORMER in self.dhen_modules and (
                self.dhen_heads < 1 or self.token_dim % self.dhen_heads
            ):
                raise ConfigError(f"dhen_heads ({self.dhen_heads}) must divide token_dim ({self.token_dim})")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["task"] = self.task.value
        d["hidden"] = list(self.hidden)
        d["backbone"] = self.backbone.value
        d["dhen_modules"] = [m.value for m in self.dhen_modules]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TowerConfig:
        """Older manifests (before the DHEN backbone) have no backbone keys: their weights are the MLP
        towers', so a missing `backbone` means mlp; missing DHEN options take the defaults."""
        d = dict(d)
        d.setdefault("backbone", Backbone.MLP.value)
        d.setdefault("sparse_optimizer", "lazy")  # snapshots before the option trained with SparseAdam
        return cls(**d)
