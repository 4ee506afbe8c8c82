"""The upstream model: user tower, Pin (ad) tower and the overall interaction tower.

Towers are plain `nn.Module`s with no loss (the training task in `towers.train` holds the losses), so the daily
export builds and runs only the tower it needs (`towers.export.load_towers`, `towers.infer.embed_users` /
`embed_ads`): neither the other tower nor the interaction tower is built to embed. Both entity towers turn their inputs into feature *tokens* of width C
(`FieldEncoder`), mix them with the configured backbone and emit one L2-normalised embedding of width `dim`:

* `dhen` (default, the DERM paper's towers): a DHEN stack over the T_in feature tokens (`towers.dhen`), a learned
  linear mix of the token axis to T_out = dim / C output tokens, flattened and L2-normalised;
* `mlp` (the foundation's towers, kept unchanged for ablations): an MLP over the flattened tokens to `dim`,
  L2-normalised;
* `sum`: the sum of the tokens (token_dim = dim), L2-normalised: no projection, so an ids-only tower is matrix
  factorisation (what the Gowalla benchmark trains: the projection of `mlp` cost validation recall there).

Context (surface, position) enters only the interaction tower, so it cannot contaminate the entity embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dermfeatures.spec import FeatureSpec
from towers.config import Backbone, TowerConfig
from towers.dhen import DhenBackbone


def init_embeddings(tables: Iterable[nn.Module], std: float | None) -> None:
    """Normal(0, std) init of embedding tables (padding row kept at 0); None keeps torch's N(0, 1)."""
    if std is None:
        return
    with torch.no_grad():
        for t in tables:
            assert isinstance(t, nn.Embedding)
            nn.init.normal_(t.weight, 0.0, std)
            if t.padding_idx is not None:
                t.weight[t.padding_idx].zero_()


class FieldEncoder(nn.Module):
    """Entity inputs -> tokens (B, T, C): one per id / categorical field, one for all numerics, one per dense
    vector (a linear projection of the pretrained representation)."""

    def __init__(
        self, spec: FeatureSpec, entity: str, c: int, init_std: float | None = None, sparse: bool = True
    ) -> None:
        super().__init__()
        self.cats = nn.ModuleList(
            nn.Embedding(f.size, c, padding_idx=0, sparse=sparse) for f in spec.cats(entity)
        )
        init_embeddings(self.cats, init_std)
        n_num = len(spec.nums(entity))
        self.num = nn.Linear(n_num, c) if n_num else None
        self.dense_sizes = [f.size for f in spec.denses(entity)]
        self.dense = nn.ModuleList(nn.Linear(s, c) for s in self.dense_sizes)
        self.n_tokens = len(self.cats) + (1 if n_num else 0) + len(self.dense)

    def forward(self, cat: torch.Tensor, num: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        toks = [emb(cat[:, j]) for j, emb in enumerate(self.cats)]
        if self.num is not None:
            toks.append(self.num(num))
        o = 0
        for size, proj in zip(self.dense_sizes, self.dense, strict=True):
            toks.append(proj(dense[:, o : o + size]))
            o += size
        return torch.stack(toks, dim=1)


class SequenceEncoder(nn.Module):
    """The user's activity sequence (B, L) -> one token (B, 1, C): each event is the sum of its ad-id,
    advertiser, category and event-kind embeddings and a projection of the ad's dense content vectors (so a
    user with two clicks already has an interest estimate); tokens are mean-pooled over valid slots."""

    def __init__(
        self,
        spec: FeatureSpec,
        c: int,
        n_categories: int,
        init_std: float | None = None,
        sparse: bool = True,
    ) -> None:
        super().__init__()
        n_dense = sum(f.size for f in spec.denses("ad"))
        self.content = nn.Linear(n_dense, c) if n_dense else None
        self.ad = nn.Embedding(spec.seq_ad_buckets, c, padding_idx=0, sparse=sparse)
        self.adv = nn.Embedding(spec.seq_adv_buckets, c, padding_idx=0, sparse=sparse)
        init_embeddings((self.ad, self.adv), init_std)
        self.cat = nn.Embedding(max(n_categories, 1), c, padding_idx=0)
        self.kind = nn.Embedding(4, c, padding_idx=0)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        seq_kind = b["seq_kind"]
        tok = (
            self.ad(b["seq_ad"]) + self.adv(b["seq_adv"]) + self.cat(b["seq_cat"]) + self.kind(seq_kind)
        )  # (B, L, C)
        if self.content is not None:
            tok = tok + self.content(b["seq_dense"])
        mask = (seq_kind > 0).unsqueeze(-1).float()
        pooled = (tok * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return pooled.unsqueeze(1)


class SumTokens(nn.Module):
    """(B, T, C) tokens -> (B, C): their sum."""

    def forward(self, toks: torch.Tensor) -> torch.Tensor:
        return toks.sum(1)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class EntityTower(nn.Module):
    """User tower (with the activity sequence) or Pin tower (static features only, so an ad is embeddable at
    launch). Output: float32 (B, dim), unit L2 norm."""

    def __init__(self, spec: FeatureSpec, entity: str, cfg: TowerConfig) -> None:
        super().__init__()
        c = cfg.token_dim
        sparse = cfg.sparse_embeddings
        self.fields = FieldEncoder(spec, entity, c, cfg.embedding_init_std, sparse)
        n_cat = next((f.size for f in spec.ad if f.name == spec.ad_category), 1)
        self.sequence = (
            SequenceEncoder(spec, c, n_cat, cfg.embedding_init_std, sparse) if entity == "user" else None
        )
        self.n_tokens = self.fields.n_tokens + (1 if self.sequence is not None else 0)  # T_in
        self.backbone: nn.Module
        if cfg.backbone is Backbone.DHEN:
            self.backbone = DhenBackbone(self.n_tokens, cfg)
        elif cfg.backbone is Backbone.SUM:
            self.backbone = SumTokens()
        else:
            self.backbone = mlp([self.n_tokens * c, *cfg.hidden, cfg.dim])
        self.flat_input = cfg.backbone is Backbone.MLP

    def tokens(self, batch: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        """The tower's input feature tokens (B, T_in, C)."""
        toks = self.fields(batch[f"{prefix}_cat"], batch[f"{prefix}_num"], batch[f"{prefix}_dense"])
        if self.sequence is not None:
            toks = torch.cat([toks, self.sequence(batch)], dim=1)
        return toks

    def forward(self, batch: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        toks = self.tokens(batch, prefix)
        out = self.backbone(toks.flatten(1) if self.flat_input else toks)
        return F.normalize(out, dim=-1)


class InteractionTower(nn.Module):
    """Both embeddings, their product and the context -> one logit per task: (B, 2) = (ctr, cvr)."""

    def __init__(self, spec: FeatureSpec, cfg: TowerConfig) -> None:
        super().__init__()
        c = cfg.token_dim
        self.ctx = nn.ModuleList(nn.Embedding(f.size, c) for f in spec.context)
        self.head = mlp([3 * cfg.dim + len(spec.context) * c, *cfg.hidden, 2])

    def forward(self, user_emb: torch.Tensor, ad_emb: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        parts = [user_emb, ad_emb, user_emb * ad_emb] + [e(ctx[:, j]) for j, e in enumerate(self.ctx)]
        return self.head(torch.cat(parts, dim=1))


class DermModel(nn.Module):
    """User tower + Pin tower + interaction tower. `forward` returns (user_emb, ad_emb, logits)."""

    def __init__(self, spec: FeatureSpec, cfg: TowerConfig) -> None:
        super().__init__()
        self.user_tower = EntityTower(spec, "user", cfg)
        self.pin_tower = EntityTower(spec, "ad", cfg)
        self.interaction = InteractionTower(spec, cfg)
        # tau = exp(log_tau), clamped to [0.01, 1] where used
        self.log_tau = nn.Parameter(
            torch.tensor(float(torch.log(torch.tensor(cfg.temperature_init)))),
            requires_grad=cfg.learn_temperature,
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u = self.user_tower(batch, "user")
        a = self.pin_tower(batch, "ad")
        return u, a, self.interaction(u, a, batch["ctx"])

    def temperature(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(0.01, 1.0)
