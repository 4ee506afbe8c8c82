"""The downstream ranker: a multi-task model (CTR and CVR heads) around a multi-gate mixture of experts whose
experts are DCNv2 cross networks, after the paper's section 3.2.

Input (the concatenation layer, width `d`): the user's and the ad's categorical / numeric / dense feature tokens
(`towers.model.FieldEncoder`), the context (surface, position; serving fixes position to the reference slot
through `dermfeatures.spec.reference_context`), one token from a transformer encoder over the user's activity
sequence, and the DERM embeddings chosen by `RankerConfig.derm_inputs` from {ctr-user, ctr-ad, cvr-user,
cvr-ad}, optionally through a projection layer that reduces their joint width (the paper's cost lever: a
DCNv2 layer costs O(d^2), appendix D.1), plus a found flag per DERM input and the user-ad dot product per
upstream model whose both sides are chosen.

Then: `n_experts` DCNv2 cross networks (`x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`, W full or low rank U V^T),
one softmax gate per task computed from x_0, and a small MLP tower per task. Output: logits (B, 2) =
(ctr, cvr). The paper's CVR ranker is a separate DHEN model; serving both heads from one multi-task ranker
is our choice (one model to train, version and serve per day).

Training and serving build inputs through one code path (`dermfeatures.batches.Inputs.impression_batch` plus
`ranking.train.DermLookup`), so there is no train/serve skew.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from dermcore.errors import ConfigError
from dermfeatures.spec import FeatureSpec
from towers.model import FieldEncoder, SequenceEncoder, init_embeddings, mlp

DERM_INPUTS = ("ctr-user", "ctr-ad", "cvr-user", "cvr-ad")
KGE_INPUTS = ("user", "ad", "advertiser")
#: the KGE relations whose score f_r(user, candidate) a ranker can read (`RankerConfig.kge_scores`): the tail is
#: the candidate ad, or its advertiser for the offsite relation (`adgraph.graph.Relation` values)
KGE_SCORES = ("user_converted_offsite_advertiser", "user_converted_ad", "user_clicked_ad")
TASKS = ("ctr", "cvr")
#: how the wide part learns (`RankerConfig.wide_fit`)
WIDE_FITS = ("regression", "adam")
#: which features the wide part has (`RankerConfig.wide_features`)
WIDE_FEATURES = ("onehot", "spec")


@dataclass(frozen=True)
class RankerConfig:
    """The ranker's one config; `epochs_initial` is the maximum number of epochs when `early_stopping` is on
    (the last training day is then held out as the validation day and the best epoch's weights are kept)."""

    derm_inputs: tuple[str, ...] = ("ctr-user", "ctr-ad")
    token_dim: int = 16  # width C of every feature token
    hidden: tuple[int, ...] = (64,)  # hidden widths of each task tower
    n_experts: int = 3
    cross_layers: int = 2
    cross_rank: int | None = 32  # low-rank W = U V^T of this rank; None = full d x d
    derm_projection: int | None = None  # width of the DERM projection layer; None = DERM vectors enter as is
    seq_heads: int = 2
    seq_layers: int = 1
    batch_size: int = 1024
    lr: float = 2e-3
    # one pass over the bootstrap window: a second one over-fitted the id tables (synthetic_quality's log, daily
    # schedule, ROC-AUC 0.6805 with 1 vs 0.6774 with 2; with the wide part, one pass over 11 days 0.6953 vs two
    # 0.6877; benchmarks/scratch runs of this session, see the issue 13 note)
    epochs_initial: int = 1
    epochs_incremental: int = 1
    early_stopping: bool = False
    patience: int = 1
    seq_len: int = 20
    id_buckets: int = 1 << 17
    #: N(0, std) start of the id / categorical embedding tables (user, ad, sequence, context); None = torch's
    #: N(0, 1). A unit-variance random vector per hashed id is noise the cross network must learn around, and an
    #: id seen a few hundred times in a window cannot train it away (benchmarks/ranker_init.py)
    embedding_init_std: float | None = 0.01
    #: a wide (linear) part beside the deep one, as in Wide & Deep: one learned weight per task for every
    #: value of every id / categorical / context field and for the crosses an ads engineer adds (each user
    #: categorical and each context field x each ad categorical), hashed into `wide_buckets` rows and added
    #: to the deep logits (`WidePart`). 0 = no wide part (how rankers before the option were trained). On
    #: synthetic_quality's log (daily schedule, one pass over the window) ROC-AUC 0.6930 with vs 0.6805 without
    #: (the one-hot regression on the same rows: 0.7076); 2^18 rows keep collisions of ~25k features near 5 %
    wide_buckets: int = 1 << 18
    #: learning rate of the wide part (None: `lr`); used with wide_fit "adam" only
    wide_lr: float | None = None
    #: how the wide part learns. "regression": fitted like the one-hot regression before the deep part trains
    #: (L-BFGS, L2 chosen on the last training day, `ranking.wide`), then frozen while the deep part, whose
    #: task towers start at zero logits, learns the residual; each daily fine-tune refits it on the last
    #: `wide_window` days, warm-started. "adam": learned with the deep part, one pass of Adam from zero (rankers
    #: before the option). The demo day (`derm demo`, 7-day bootstrap + 6 increments, eval day 20013, CTR
    #: ROC-AUC beside the one-hot regression on the same rows, 0.7244): adam 0.7144 (ranker - regression -0.0100
    #: [-0.0155, -0.0046], paired bootstrap over users), regression 0.7225 [-0.0052, +0.0020] (seed 1: 0.7232;
    #: regression - adam +0.0081 [+0.0036, +0.0118]);
    #: the wide part alone, adam 0.7096, regression 0.7199; no wide part 0.7042 (benchmarks/ranker_wide.py)
    wide_fit: str = "regression"
    #: days of rows a daily fine-tune refits the wide part on (ending with the new day)
    wide_window: int = 28
    #: the wide part's features. "onehot": the log's one-hot fields and crosses from the raw column values
    #: (`dermfeatures.onehot.dataset_fields`, the one definition the regression baseline reads too: on the
    #: synthetic log its 9 fields, exact ids), recorded in the ranker's feature spec. "spec": every id /
    #: categorical field of the feature spec (ids as hashed into the id tables) and the user / context x ad
    #: categorical crosses, 24 features on the synthetic log (rankers before the option). Fitted alone on the
    #: demo's 13 days before the eval day, ROC-AUC on the eval day: "spec"'s 24 features 0.7209, the
    #: regression's 9 fields over the spec's hashed ids 0.7227, "onehot" 0.7244 (16,010 features in 15,537 of
    #: 2^18 rows; 2^20 rows: 0.7246), the regression itself 0.7244 (benchmarks/ranker_wide.py, regression:* arms)
    wide_features: str = "onehot"
    #: the sparse id tables' optimiser (`dermtrain.optim`): "lazy" = SparseAdam, "catch_up" = rows move as under
    #: dense Adam at sparse cost
    sparse_optimizer: str = "lazy"
    #: the KGE store family the ranker reads (`kge-transra`, `kge-transr`, `kge-transe`; `adgraph.family`); None =
    #: no KGE inputs. Rows of day d read the family's version before d (`ranking.kge`)
    kge_family: str | None = None
    #: which entities' KGE vectors enter the concatenation layer (with a found flag each, and the user . ad dot)
    kge_inputs: tuple[str, ...] = KGE_INPUTS
    #: False: the store's vectors enter frozen. True: trainable ID tables (one per input entity, explicit int64
    #: ids) initialised from the family's version before the first training day, learning at `kge_lr`
    kge_finetune: bool = False
    #: target attention (needs kge_finetune and the ad input): the candidate ad's vector (its ad row, plus its
    #: advertiser's row with the advertiser input) attends over the table vectors of the user's graph neighbours
    #: (ads clicked / converted onsite; with the advertiser input also advertisers converted offsite; the graph
    #: version of the KGE version read); output joins the concatenation layer
    kge_attention: bool = False
    #: learning rate of the KGE ID tables (None: `lr`)
    kge_lr: float | None = None
    #: neighbours of each kind (ads, advertisers) the attention reads, newest first
    kge_neighbours: int = 20
    #: KGE relation scores as inputs of the wide part: for each relation named, the score f_r(user, candidate)
    #: of the KGE model version behind the store version read (its own vectors, relation vector and
    #: projection; `ranking.kge`) and a found flag, two real-valued columns fitted with the wide part. Why: the
    #: vectors alone enter only the deep part, which after the fitted wide part learns a small residual in one
    #: pass. On kge_ranker.json's synthetic rows (TransRA, KGEConfig defaults) the fitted wide part alone scored
    #: CVR ROC-AUC 0.6139 on the test clicks, 0.6250 with the offsite score, 0.6274 with all three (CTR 0.6957
    #: -> 0.6999; kge_signal.json); the ranker arms, 3 seeds: finetune_attention 0.6275 with the scores, 0.6139
    #: without, none 0.6138 (kge_ranker.json). () = none; unused without a wide part (wide_buckets 0), like
    #: kge_inputs without a kge_family
    kge_scores: tuple[str, ...] = KGE_SCORES
    #: negative downsampling of the deep part's training rows (`dermfeatures.batches.Inputs.impressions`):
    #: impressions with a click or conversion are all kept, the others with this probability and weight
    #: 1 / rate in the CTR loss, so the predictions stay calibrated without correction. The wide part is fitted
    #: on every row: fitted on the kept rows (weighted), the one-hot ids of users with a few impressions a day
    #: overshot (mean prediction 3x the observed rate at rate 0.1 on a synthetic day). Validation, calibration
    #: reports and scoring read every row. 1.0: every row (the default)
    negative_rate: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.embedding_init_std is not None and not self.embedding_init_std > 0:
            raise ConfigError("embedding_init_std must be > 0 (or None for torch's default N(0, 1))")
        bad = [d for d in self.derm_inputs if d not in DERM_INPUTS]
        if bad:
            raise ConfigError(f"unknown DERM inputs {bad}; choose from {DERM_INPUTS}")
        if len(set(self.derm_inputs)) != len(self.derm_inputs):
            raise ConfigError(f"repeated DERM inputs in {self.derm_inputs}")
        if self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("batch_size must be >= 1 and lr > 0")
        if min(self.token_dim, self.n_experts, self.cross_layers, self.seq_heads, self.seq_layers) < 1:
            raise ConfigError("token_dim, n_experts, cross_layers, seq_heads and seq_layers must be >= 1")
        if self.token_dim % self.seq_heads:
            raise ConfigError(f"token_dim {self.token_dim} must be divisible by seq_heads {self.seq_heads}")
        if self.cross_rank is not None and self.cross_rank < 1:
            raise ConfigError("cross_rank must be >= 1 (or None for full rank)")
        if self.derm_projection is not None and self.derm_projection < 1:
            raise ConfigError("derm_projection must be >= 1 (or None for no projection)")
        if self.epochs_initial < 1 or self.epochs_incremental < 1 or self.patience < 1:
            raise ConfigError("epochs_initial, epochs_incremental and patience must be >= 1")
        if any(h < 1 for h in self.hidden):
            raise ConfigError("hidden widths must be >= 1")
        if self.wide_buckets < 0 or self.wide_buckets == 1:
            raise ConfigError("wide_buckets must be 0 (no wide part) or >= 2")
        if self.wide_lr is not None and not self.wide_lr > 0:
            raise ConfigError("wide_lr must be > 0 (or None for lr)")
        if self.wide_fit not in WIDE_FITS:
            raise ConfigError(f"wide_fit must be one of {', '.join(WIDE_FITS)}")
        if self.wide_features not in WIDE_FEATURES:
            raise ConfigError(f"wide_features must be one of {', '.join(WIDE_FEATURES)}")
        if not isinstance(self.wide_window, int) or self.wide_window < 1:
            raise ConfigError("wide_window must be an integer >= 1 (days)")
        if not 0 < self.negative_rate <= 1:
            raise ConfigError(f"negative_rate must be in (0, 1], got {self.negative_rate}")
        from dermtrain.optim import SPARSE_OPTIMIZERS

        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ConfigError(f"sparse_optimizer must be one of {', '.join(SPARSE_OPTIMIZERS)}")
        object.__setattr__(self, "kge_inputs", tuple(self.kge_inputs))
        if self.kge_family is not None:
            from adgraph.family import is_kge_family

            if not isinstance(self.kge_family, str) or not is_kge_family(self.kge_family):
                raise ConfigError(
                    f"kge_family {self.kge_family!r} is not a KGE store family (kge-transra, ...)"
                )
            bad = [e for e in self.kge_inputs if e not in KGE_INPUTS]
            if bad or not self.kge_inputs or len(set(self.kge_inputs)) != len(self.kge_inputs):
                raise ConfigError(f"kge_inputs {list(self.kge_inputs)}: one or more distinct of {KGE_INPUTS}")
        if (self.kge_finetune or self.kge_attention) and self.kge_family is None:
            raise ConfigError("kge_finetune and kge_attention need a kge_family")
        if self.kge_attention and not (self.kge_finetune and "ad" in self.kge_inputs):
            raise ConfigError("kge_attention needs kge_finetune and the ad kge_input")
        if self.kge_lr is not None and not self.kge_lr > 0:
            raise ConfigError("kge_lr must be > 0 (or None for lr)")
        if not isinstance(self.kge_neighbours, int) or self.kge_neighbours < 1:
            raise ConfigError("kge_neighbours must be an integer >= 1")
        object.__setattr__(self, "kge_scores", tuple(self.kge_scores))
        if self.kge_family is not None and self.kge_scores:
            bad = [r for r in self.kge_scores if r not in KGE_SCORES]
            if bad or len(set(self.kge_scores)) != len(self.kge_scores):
                raise ConfigError(f"kge_scores {list(self.kge_scores)}: distinct relations of {KGE_SCORES}")

    @property
    def wide_dense(self) -> tuple[str, ...]:
        """The KGE relations whose scores the wide part reads (none without a kge_family or a wide part)."""
        return self.kge_scores if self.kge_family is not None and self.wide_buckets else ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["derm_inputs"] = list(self.derm_inputs)
        d["hidden"] = list(self.hidden)
        d["kge_inputs"] = list(self.kge_inputs)
        d["kge_scores"] = list(self.kge_scores)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RankerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown ranker config keys {sorted(unknown)}")
        d = dict(d)
        # rankers written before the options existed started from N(0, 1) and had no wide part
        d.setdefault("embedding_init_std", None)
        d.setdefault("wide_buckets", 0)
        d.setdefault("wide_lr", None)
        d.setdefault("wide_fit", "adam")
        d.setdefault("wide_features", "spec")
        d.setdefault("sparse_optimizer", "lazy")
        d["derm_inputs"] = tuple(d["derm_inputs"])
        if "kge_inputs" in d:
            d["kge_inputs"] = tuple(d["kge_inputs"])
        # rankers written before KGE relation scores read none
        d["kge_scores"] = tuple(d.get("kge_scores", ()))
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


class CrossLayer(nn.Module):
    """One DCNv2 cross layer: x_{l+1} = x_0 * (W x_l + b) + x_l, all (B, d). Full rank: `w` (d -> d). With
    `rank`, W = U V^T: `v` (d -> rank, no bias) then `u` (rank -> d, bias b), which costs 2 d r instead of d^2
    multiply-adds per row."""

    def __init__(self, d: int, rank: int | None = None) -> None:
        super().__init__()
        self.w = nn.Linear(d, d) if rank is None else None
        self.v = nn.Linear(d, rank, bias=False) if rank is not None else None
        self.u = nn.Linear(rank, d) if rank is not None else None

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        if self.w is not None:
            return x0 * self.w(xl) + xl
        assert self.u is not None and self.v is not None
        return x0 * self.u(self.v(xl)) + xl


class CrossNetwork(nn.Module):
    """`layers` stacked cross layers on x_0 (B, d) -> (B, d): one expert of the mixture."""

    def __init__(self, d: int, layers: int, rank: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossLayer(d, rank) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class MMoE(nn.Module):
    """Multi-gate mixture of experts: every expert sees x_0 (B, d); each task mixes the expert outputs with its
    own softmax gate computed from x_0. `forward` returns (B, n_tasks, d)."""

    def __init__(self, d: int, n_tasks: int, n_experts: int, layers: int, rank: int | None) -> None:
        super().__init__()
        self.experts = nn.ModuleList(CrossNetwork(d, layers, rank) for _ in range(n_experts))
        self.gates = nn.ModuleList(nn.Linear(d, n_experts) for _ in range(n_tasks))

    def gate_weights(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, n_tasks, n_experts): one softmax over the experts per task and row."""
        return torch.stack([torch.softmax(g(x0), dim=-1) for g in self.gates], dim=1)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        e = torch.stack([expert(x0) for expert in self.experts], dim=1)  # (B, E, d)
        return torch.einsum("bte,bed->btd", self.gate_weights(x0), e)


def _splitmix(h: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser over int64 tensors (wrapping multiplies; the masks make the shifts logical)."""
    h = (h ^ ((h >> 30) & 0x3FFFFFFFF)) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    h = (h ^ ((h >> 27) & 0x1FFFFFFFFF)) * -7723592293110705685  # 0x94D049BB133111EB
    return h ^ ((h >> 31) & 0x1FFFFFFFF)


class WidePart(nn.Module):
    """The linear part of a Wide & Deep ranker: logits (B, n_tasks) = sum over features of a learned weight per
    task. Features: with `spec.onehot` (`RankerConfig.wide_features = "onehot"`), the one-hot fields and
    crosses of `dermfeatures.onehot`, the regression baseline's (`eval.baselines.logistic_regression`): the
    batch's `onehot` keys int64 (B, F), each (field, key) hashed into `buckets` rows. Without (rankers before
    the option), every id / categorical field of the user and the ad, every context field, and the crosses
    (user categorical x ad categorical, context x ad categorical) over the non-id fields, read from the
    batch's categorical indices (ids as hashed into the id tables). Weights start at 0, so an untrained wide
    part adds nothing. `n_dense` real-valued columns (the KGE relation scores and their found flags) get one
    weight per task each, fitted with the table. The table takes dense gradients and Adam (see
    `towers.config.TowerConfig.sparse_embeddings`), or, with `intercept`, is fitted as a regression by
    `ranking.wide` and carries that regression's intercept per task (a buffer added to the logits)."""

    cross_cols: torch.Tensor  # (P, 2) column pairs of the crosses in the stacked categorical matrix
    intercept: torch.Tensor | None  # (n_tasks,) with `intercept`

    def __init__(
        self,
        spec: FeatureSpec,
        buckets: int,
        n_tasks: int,
        intercept: bool = False,
        onehot: bool = False,
        n_dense: int = 0,
    ) -> None:
        """`onehot`: the features are `spec.onehot`'s (which must name some); otherwise the spec's fields."""
        super().__init__()
        if onehot != bool(spec.onehot):
            raise ConfigError(
                "the wide part reads one-hot fields exactly when the feature spec names them "
                f"(onehot {onehot}, spec.onehot {list(spec.onehot)}): build the spec with ranking.train.ranker_spec"
            )
        self.buckets = buckets
        self.n_onehot = len(spec.onehot)
        self.register_buffer("intercept", torch.zeros(n_tasks) if intercept else None)
        # real-valued columns beside the hashed one-hot features (the KGE relation scores, `Ranker.wide_dense`):
        # one weight per column and task, starting at 0; absent (no parameter) without dense columns, so the
        # state of a ranker trained before them is unchanged
        self.n_dense = n_dense
        self.dense = nn.Parameter(torch.zeros(n_dense, n_tasks)) if n_dense else None
        user, ad = spec.cats("user"), spec.cats("ad")
        n_user, n_ad, n_ctx = len(user), len(ad), len(spec.context)
        # column layout of the stacked categorical matrix: user cats, ad cats, context
        ad_cols = [n_user + j for j, f in enumerate(ad) if f.kind == "categorical"]
        left = [j for j, f in enumerate(user) if f.kind == "categorical"]
        left += [n_user + n_ad + j for j in range(n_ctx)]
        pairs = [] if self.n_onehot else [(a, b) for a in left for b in ad_cols]
        self.register_buffer(
            "cross_cols", torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), persistent=False
        )
        self.table = nn.Embedding(buckets, n_tasks)
        nn.init.zeros_(self.table.weight)

    def keys(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """int64 (B, n_features): each feature's row in the table."""
        if self.n_onehot:
            k = b["onehot"]  # (B, F) field keys
            salt = (
                torch.arange(1, k.shape[1] + 1, device=k.device) * -7046029254386353131
            )  # 0x9E3779B97F4A7C15
            return torch.remainder(_splitmix(k + salt), self.buckets)
        # table indices: crosses pair categorical (non-id) fields, whose values are < 2^21; a single feature's
        # value (an id bucket) is < 2^42, below its slot's offset
        x = torch.cat([b["user_cat"], b["ad_cat"], b["ctx"]], dim=1).long()
        slots = torch.arange(x.shape[1] + len(self.cross_cols), device=x.device)
        single = x  # (B, S)
        cross = x[:, self.cross_cols[:, 0]] * (1 << 21) + x[:, self.cross_cols[:, 1]]  # (B, P)
        k = torch.cat([single, cross], dim=1) + (slots + 1) * (1 << 42)
        # a multiplicative hash with an xor-shift (int64 arithmetic wraps), then the bucket
        h = k * 0x5851F42D4C957F2D
        h = h ^ (h >> 29)
        return torch.remainder(h, self.buckets)

    def forward(self, b: dict[str, torch.Tensor], dense: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, n_tasks); `dense` float32 (B, n_dense) when the part has dense columns."""
        out = self.table(self.keys(b)).sum(1)
        if self.dense is not None:
            assert dense is not None and dense.shape[1] == self.n_dense
            out = out + dense @ self.dense
        return out if self.intercept is None else out + self.intercept


class KGETables(nn.Module):
    """Trainable KGE ID tables: per entity, sorted int64 ids (a buffer saved with the weights) and an
    `nn.Embedding(n + 1, dim)` whose row 0 is every id the table does not hold (starts at zero)."""

    def __init__(self, sizes: dict[str, int], dim: int) -> None:
        super().__init__()
        self.entities = tuple(sizes)
        self.emb = nn.ModuleDict({e: nn.Embedding(n + 1, dim) for e, n in sizes.items()})
        for e, n in sizes.items():
            self.register_buffer(f"ids_{e}", torch.zeros(n, dtype=torch.long))

    @torch.no_grad()
    def init_from(self, vectors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """entity -> (ids int64 (n,) sorted unique, vecs float32 (n, dim)), sizes as constructed."""
        for e in self.entities:
            ids, vecs = vectors[e]
            getattr(self, f"ids_{e}").copy_(ids)
            w: torch.Tensor = self.emb[e].weight  # type: ignore[assignment]
            w[0].zero_()
            w[1:].copy_(vecs)

    def rows(self, e: str, ids: torch.Tensor) -> torch.Tensor:
        """int64 rows (same shape as ids) of `ids` in table `e`; 0 for ids it does not hold (and -1 padding)."""
        known: torch.Tensor = getattr(self, f"ids_{e}")
        if len(known) == 0:
            return torch.zeros_like(ids)
        pos = torch.searchsorted(known, ids).clamp_(max=len(known) - 1)
        return torch.where(known[pos] == ids, pos + 1, torch.zeros_like(pos))

    def forward(self, e: str, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors (..., dim), found bool (...))."""
        r = self.rows(e, ids)
        return self.emb[e](r), r > 0


class KGETargetAttention(nn.Module):
    """Target attention of the candidate over the user's graph neighbours: query q (B, d), keys (B, L, d) with
    mask (B, L). Scores <W_q q, W_k k> / sqrt(d), softmax over the unmasked keys, output sum_l w_l W_v k_l.
    Returns (B, d + 2): the output, <q, output> and a has-neighbours flag (a user with none gets zeros). W_q,
    W_k, W_v start at the identity, so the first steps attend by KGE similarity as published."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        for lin in (self.q, self.k, self.v):
            nn.init.eye_(lin.weight)
        self.kind = nn.Embedding(2, dim)  # 0: neighbour ad, 1: neighbour advertiser
        nn.init.zeros_(self.kind.weight)
        self.scale = 1.0 / float(dim) ** 0.5

    def forward(
        self, q: torch.Tensor, keys: torch.Tensor, kind: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        keys = keys + self.kind(kind)
        s = torch.einsum("bd,bld->bl", self.q(q), self.k(keys)) * self.scale
        w = torch.softmax(s.masked_fill(~mask, -1e9), dim=1) * mask  # rows with no neighbour: all 0
        out = torch.einsum("bl,bld->bd", w, self.v(keys))
        has = mask.any(1, keepdim=True).float()
        return torch.cat([out, (q * out).sum(1, keepdim=True), has], dim=1)


class SequenceTransformer(SequenceEncoder):
    """The user's activity sequence (B, L) -> one token (B, C) through a transformer encoder.

    Event tokens are built from `SequenceEncoder`'s embeddings (ad id, advertiser, category, event kind and the
    ad's content vectors) plus a learned position (recency) embedding; a learned summary token is prepended
    and its encoder output is the sequence's token, so a user with no events (every slot padded) still gets a
    defined value. The towers keep using `SequenceEncoder`'s mean pooling.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        c: int,
        n_categories: int,
        seq_len: int,
        heads: int,
        layers: int,
        init_std: float | None = None,
    ) -> None:
        super().__init__(spec, c, n_categories, init_std)
        self.position = nn.Embedding(seq_len, c)
        self.summary = nn.Parameter(torch.zeros(1, 1, c))
        layer = nn.TransformerEncoderLayer(
            c, heads, dim_feedforward=2 * c, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        kind = b["seq_kind"]  # (B, L), 0 = padding
        tok = self.ad(b["seq_ad"]) + self.adv(b["seq_adv"]) + self.cat(b["seq_cat"]) + self.kind(kind)
        if self.content is not None:
            tok = tok + self.content(b["seq_dense"])
        n, length = kind.shape
        tok = tok + self.position.weight[:length].unsqueeze(0)  # (B, L, C)
        x = torch.cat([self.summary.expand(n, -1, -1), tok], dim=1)  # (B, 1 + L, C)
        pad = torch.cat([torch.zeros(n, 1, dtype=torch.bool, device=kind.device), kind == 0], dim=1)
        return self.encoder(x, src_key_padding_mask=pad)[:, 0]


class Ranker(nn.Module):
    """Inputs: the batch of `dermfeatures.batches.Inputs.impression_batch` plus `derm_<input>` float32 (B, dim)
    and `derm_<input>_found` float32 (B,) for each configured DERM input (zeros and 0 where the entity had no
    embedding in the store version before the impression's day). Output: logits (B, 2) = (ctr, cvr)."""

    def __init__(
        self,
        spec: FeatureSpec,
        cfg: RankerConfig,
        derm_dim: int,
        kge_dim: int = 0,
        kge_sizes: dict[str, int] | None = None,
    ) -> None:
        """`kge_dim`: width of the KGE vectors (0 without `cfg.kge_family`); `kge_sizes`: entity -> rows of the
        finetuned ID tables (with `cfg.kge_finetune`; the ranker's manifest records them)."""
        super().__init__()
        c = cfg.token_dim
        self.cfg = cfg
        self.derm_dim = derm_dim
        self.kge_dim = kge_dim if cfg.kge_family is not None else 0
        self.kge_tables: KGETables | None = None
        self.kge_attention: KGETargetAttention | None = None
        if cfg.kge_finetune:
            if kge_sizes is None or set(kge_sizes) != set(cfg.kge_inputs):
                raise ConfigError(
                    f"kge_finetune needs table sizes for {list(cfg.kge_inputs)}, got {kge_sizes}"
                )
            self.kge_tables = KGETables({e: int(kge_sizes[e]) for e in cfg.kge_inputs}, self.kge_dim)
        if cfg.kge_attention:
            self.kge_attention = KGETargetAttention(self.kge_dim)
        std = cfg.embedding_init_std
        self.user = FieldEncoder(spec, "user", c, std)
        self.ad = FieldEncoder(spec, "ad", c, std)
        n_cat = next((f.size for f in spec.ad if f.name == spec.ad_category), 1)
        self.sequence = SequenceTransformer(spec, c, n_cat, cfg.seq_len, cfg.seq_heads, cfg.seq_layers, std)
        self.ctx = nn.ModuleList(nn.Embedding(f.size, c, sparse=True) for f in spec.context)
        init_embeddings(self.ctx, std)
        n_derm = len(cfg.derm_inputs)
        self.dots = [t for t in TASKS if f"{t}-user" in cfg.derm_inputs and f"{t}-ad" in cfg.derm_inputs]
        raw = n_derm * derm_dim
        self.projection = (
            nn.Linear(raw, cfg.derm_projection) if n_derm and cfg.derm_projection is not None else None
        )
        derm_width = (cfg.derm_projection if self.projection is not None else raw) or 0
        self.input_width = (self.user.n_tokens + self.ad.n_tokens + 1 + len(spec.context)) * c
        self.input_width += derm_width + n_derm + len(self.dots)
        if cfg.kge_family is not None:
            n_kge = len(cfg.kge_inputs)
            both = "user" in cfg.kge_inputs and "ad" in cfg.kge_inputs
            self.input_width += n_kge * self.kge_dim + n_kge + int(both)
            self.input_width += (self.kge_dim + 2) if cfg.kge_attention else 0
        self.mmoe = MMoE(self.input_width, len(TASKS), cfg.n_experts, cfg.cross_layers, cfg.cross_rank)
        self.towers = nn.ModuleList(mlp([self.input_width, *cfg.hidden, 1]) for _ in TASKS)
        fitted = cfg.wide_fit == "regression"
        n_dense = 2 * len(cfg.wide_dense)
        self.wide = (
            WidePart(spec, cfg.wide_buckets, len(TASKS), fitted, cfg.wide_features == "onehot", n_dense)
            if cfg.wide_buckets
            else None
        )
        if self.wide is not None and fitted:
            # fitted by `ranking.wide`, never by the optimiser
            for p in self.wide.parameters():
                p.requires_grad_(False)

    def concat(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """The concatenation layer x_0: float32 (B, input_width)."""
        parts = [
            self.user(b["user_cat"], b["user_num"], b["user_dense"]).flatten(1),
            self.ad(b["ad_cat"], b["ad_num"], b["ad_dense"]).flatten(1),
            self.sequence(b),
        ]
        parts += [e(b["ctx"][:, j]) for j, e in enumerate(self.ctx)]
        if self.cfg.derm_inputs:
            derm = torch.cat([b[f"derm_{name}"] for name in self.cfg.derm_inputs], dim=1)
            parts.append(derm if self.projection is None else self.projection(derm))
            parts.append(torch.stack([b[f"derm_{name}_found"] for name in self.cfg.derm_inputs], dim=1))
        for t in self.dots:
            parts.append((b[f"derm_{t}-user"] * b[f"derm_{t}-ad"]).sum(1, keepdim=True))
        if self.cfg.kge_family is not None:
            parts += self.kge_parts(b)
        return torch.cat(parts, dim=1)

    def kge_parts(self, b: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The KGE inputs of the concatenation layer: per input entity its vector (frozen from the batch, or
        the finetuned table's row), the found flags, the user . ad dot, and the attention block's output."""
        vec: dict[str, torch.Tensor] = {}
        found: list[torch.Tensor] = []
        for e in self.cfg.kge_inputs:
            if self.kge_tables is not None:
                v, f = self.kge_tables(e, b[f"kge_{e}_id"])
                vec[e] = v
                found.append(f.float())
            else:
                vec[e] = b[f"kge_{e}"]
                found.append(b[f"kge_{e}_found"])
        parts = [vec[e] for e in self.cfg.kge_inputs] + [torch.stack(found, dim=1)]
        if "user" in vec and "ad" in vec:
            parts.append((vec["user"] * vec["ad"]).sum(1, keepdim=True))
        if self.kge_attention is not None:
            assert self.kge_tables is not None
            keys, mask = self.kge_tables("ad", b["kge_nb_ad_id"])  # (B, L, d), (B, L)
            kind = torch.zeros_like(mask, dtype=torch.long)
            q = vec["ad"]
            if "advertiser" in vec:
                k_adv, m_adv = self.kge_tables("advertiser", b["kge_nb_advertiser_id"])
                keys, mask = torch.cat([keys, k_adv], dim=1), torch.cat([mask, m_adv], dim=1)  # (B, 2L, ...)
                kind = torch.cat([kind, torch.ones_like(m_adv, dtype=torch.long)], dim=1)
                q = q + vec["advertiser"]
            parts.append(self.kge_attention(q, keys, kind, mask))
        return parts

    def wide_dense(self, b: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The wide part's real-valued columns float32 (B, 2 R): per KGE score relation (`cfg.kge_scores`) the
        score and its found flag (`kge_score_<relation>`, `kge_score_<relation>_found`); None without any."""
        rels = self.cfg.wide_dense
        if not rels:
            return None
        cols = [b[f"kge_score_{r}{suffix}"].float() for r in rels for suffix in ("", "_found")]
        return torch.stack(cols, dim=1)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        mixed = self.mmoe(self.concat(b))  # (B, 2, d)
        deep = torch.cat([tower(mixed[:, i]) for i, tower in enumerate(self.towers)], dim=1)
        return deep if self.wide is None else deep + self.wide(b, self.wide_dense(b))

    def output_layers(self) -> list[nn.Linear]:
        """The last linear layer of each task tower (ctr, cvr): its bias is the task's intercept."""
        return [[m for m in t.modules() if isinstance(m, nn.Linear)][-1] for t in self.towers]

    @torch.no_grad()
    def zero_deep_output(self) -> None:
        """Make the deep logits 0: each task tower's last layer gets zero weights and bias, so a ranker whose
        wide part was just fitted starts as that regression and the deep part learns the residual (the zero
        layer still receives gradients from its first step)."""
        for last in self.output_layers():
            last.weight.zero_()
            last.bias.zero_()

    @torch.no_grad()
    def init_output_bias(self, ctr_rate: float, cvr_rate: float) -> None:
        """Start each head's output bias at the logit of its training base rate (CVR: post-click), so rare
        labels start calibrated and the first steps are not spent learning the rate."""
        for last, rate in zip(self.output_layers(), (ctr_rate, cvr_rate), strict=True):
            p = min(max(rate, 1e-4), 1 - 1e-4)
            last.bias.fill_(float(torch.log(torch.tensor(p / (1 - p)))))
