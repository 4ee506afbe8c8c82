"""Baselines every quality figure is reported beside (CONVENTIONS 24), as library code.

Retrieval:
    popularity_topk     the most-clicked live ads of the window before the day (`retrieval.retrieve.popularity`)
    plain_mf            matrix factorisation on (user, ad) click pairs: exact id tables, in-batch sampled softmax
                        with logQ correction, cosine / fixed temperature, dense Adam. The towers' retrieval loss
                        without the towers: what the features and the sequence add is the gap to it.
Ranking:
    item_ctr            each ad's smoothed click-through rate on the training rows
    logistic_vs_ranker  the regression on the rows a workspace's ranker learned from, beside the ranker on a day
    logistic_regression L2-regularised logistic regression over one-hot features and the crosses an ads engineer
                        adds (region / age x category, surface x category), fitted by L-BFGS, the L2 weight chosen
                        by validation ROC-AUC (moved from `benchmarks/synthetic_ceiling.py`). The fields, their
                        keys and the join of their columns are `dermfeatures.onehot`'s, which the ranker's wide
                        part reads too
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adslog.dataset import Dataset
from adslog.workspace import Workspace
from dermfeatures.onehot import ADS_FIELDS, ColumnJoin, Fields, dataset_fields, field_columns, field_keys
from dermtrain.logistic import base_rate_logit, lbfgs_logistic
from eval.metrics import roc_auc
from retrieval.retrieve import POPULARITY_DAYS, popularity

# --- retrieval: popularity ---------------------------------------------------------------------------------


def popularity_topk(
    ds: Dataset,
    day: int,
    live: np.ndarray,
    k: int,
    window: int = POPULARITY_DAYS,
    clicked_ads: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k most-clicked `live` ads over the `window` days before `day` (ties by ad_id): (ids int64[min(k,
    n_live)], clicks float32 of the same length). Unclicked live ads fill the list when fewer were clicked."""
    ids, clicks = popularity(ds, day, np.asarray(live, np.int64), window, clicked_ads)
    return ids[:k], clicks[:k]


# --- ranking: item CTR -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemCtr:
    """Smoothed CTR per ad: (clicks + smoothing * base) / (impressions + smoothing); ads never shown get base."""

    ad_ids: np.ndarray  # int64[n], sorted
    ctr: np.ndarray  # float64[n]
    base: float

    def scores(self, ad_ids: np.ndarray) -> np.ndarray:
        """float64[len(ad_ids)]: each ad's smoothed CTR."""
        q = np.asarray(ad_ids, np.int64)
        out = np.full(q.shape, self.base, np.float64)
        if len(self.ad_ids):
            pos = np.clip(np.searchsorted(self.ad_ids, q), 0, len(self.ad_ids) - 1)
            hit = self.ad_ids[pos] == q
            out[hit] = self.ctr[pos[hit]]
        return out


def item_ctr(ad_ids: np.ndarray, clicks: np.ndarray, smoothing: float = 10.0) -> ItemCtr:
    """Fit `ItemCtr` on impressions (ad_ids int64[n], clicks 0/1 [n]); `smoothing` pseudo-impressions at the
    overall rate keep an ad shown twice from scoring 0 or 1."""
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    a = np.asarray(ad_ids, np.int64)
    y = np.asarray(clicks, np.float64)
    base = float(y.mean()) if len(y) else 0.0
    ids, inv = np.unique(a, return_inverse=True)
    shown = np.bincount(inv, minlength=len(ids)).astype(np.float64)
    clicked = np.bincount(inv, weights=y, minlength=len(ids))
    return ItemCtr(ids, (clicked + smoothing * base) / np.maximum(shown + smoothing, 1e-12), base)


# --- ranking: one-hot logistic regression ------------------------------------------------------------------

#: L2 weights tried (penalty l2 / 2 * |w|^2 on the mean log loss)
LR_L2 = (1e-6, 3e-6, 1e-5, 3e-5)


def feature_columns(
    ds: Dataset, rows: Mapping[str, np.ndarray], fields: Fields, label: str = "click"
) -> dict[str, np.ndarray]:
    """The columns `fields` name, for impressions `rows` (at least user_id, ad_id and `label`, each [n]): a
    column in `rows` is taken as is, else from the users table (joined on user_id), else from the ads table
    (on ad_id) (`dermfeatures.onehot.ColumnJoin`, the ranker's wide part's join). Ids missing from a table are
    an error."""
    out = ColumnJoin(ds, [c for c in field_columns(fields) if c not in rows]).join(rows)
    if label not in out:
        raise ValueError(f"rows have no {label!r} column")
    return out


def read_rows(
    ds: Dataset, days: int | Sequence[int], fields: Fields, label: str = "click"
) -> dict[str, np.ndarray]:
    """`feature_columns` of the impressions of `days`, read from the log."""
    imp_cols = set(ds.columns["impressions"])
    cols = sorted({"user_id", "ad_id", label} | (set(field_columns(fields)) & imp_cols))
    t = ds.impressions(days, cols)
    return feature_columns(ds, {c: t.column(c).to_numpy() for c in cols}, fields, label)


@dataclass(frozen=True)
class LogisticModel:
    """One weight per (field, value) seen in training, a bias; values unseen in training weigh 0."""

    fields: tuple[tuple[str, ...], ...]
    values: tuple[np.ndarray, ...]  # per field, the sorted int64 keys seen in training
    weights: np.ndarray  # float64[sum of len(values)]
    bias: float
    l2: float

    @property
    def n_features(self) -> int:
        return len(self.weights)

    def encode(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        """int64[n, fields]: the feature index of each row's value per field, -1 where unseen in training."""
        out, off = [], 0
        for f, values in zip(self.fields, self.values, strict=True):
            k = field_keys(cols, f)
            if len(values) == 0:
                out.append(np.full(len(k), -1, np.int64))
                continue
            pos = np.minimum(np.searchsorted(values, k), len(values) - 1)
            out.append(np.where(values[pos] == k, pos + off, -1))
            off += len(values)
        return np.stack(out, 1)

    def logits(self, cols: Mapping[str, np.ndarray]) -> np.ndarray:
        """float64[n]: the click logit of each row of `cols` (columns of `feature_columns`)."""
        x = self.encode(cols)
        w = np.r_[self.weights, 0.0]
        return w[np.where(x < 0, len(w) - 1, x)].sum(1) + self.bias


def fit_logistic(
    cols: Mapping[str, np.ndarray], fields: Fields, l2: float, label: str = "click", max_iter: int = 300
) -> LogisticModel:
    """L2-regularised logistic regression of `label` on the one-hot `fields` of `cols`, by L-BFGS (strong Wolfe
    line search, float64): minimises mean log loss + l2 / 2 * |w|^2; the bias (unpenalised) starts at the
    base-rate logit."""
    fields = tuple(tuple(f) for f in fields)
    values = tuple(np.unique(field_keys(cols, f)) for f in fields)
    model = LogisticModel(fields, values, np.zeros(sum(len(v) for v in values)), 0.0, l2)
    x = torch.from_numpy(model.encode(cols))
    yt = torch.from_numpy(np.asarray(cols[label], np.float64))
    w, b, _, _ = lbfgs_logistic(
        x, yt, torch.zeros(model.n_features, dtype=torch.float64), base_rate_logit(yt), l2, max_iter
    )
    return LogisticModel(fields, values, w.numpy().copy(), b, l2)


@dataclass(frozen=True)
class LogisticFit:
    model: LogisticModel
    validation_roc_auc_by_l2: dict[float, float | None]
    refit: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "l2": self.model.l2,
            "fields": [list(f) for f in self.model.fields],
            "n_features": self.model.n_features,
            "validation_roc_auc_by_l2": {repr(k): v for k, v in self.validation_roc_auc_by_l2.items()},
            "refit_on_train_and_validation": self.refit,
        }


def _concat(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([a[c], b[c]]) for c in a if c in b}


def logistic_regression(
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    fields: Fields = ADS_FIELDS,
    l2_grid: Sequence[float] = LR_L2,
    refit: bool = True,
    label: str = "click",
) -> LogisticFit:
    """Fit on `train` for each L2 weight, keep the one with the best ROC-AUC on `val` (the smaller on ties),
    then (`refit`) fit again on train + val with it. `train` / `val`: columns of `feature_columns` / `read_rows`.
    Score other rows with `fit.model.logits(cols)`."""
    if not l2_grid:
        raise ValueError("l2_grid is empty")
    by_l2: dict[float, float | None] = {}
    models: dict[float, LogisticModel] = {}
    for l2 in sorted(l2_grid):
        models[l2] = fit_logistic(train, fields, l2, label)
        by_l2[l2] = roc_auc(models[l2].logits(val), np.asarray(val[label]))
    best = max(by_l2, key=lambda k: (by_l2[k] if by_l2[k] is not None else -1.0, -k))
    model = fit_logistic(_concat(train, val), fields, best, label) if refit else models[best]
    return LogisticFit(model, by_l2, refit)


def logistic_vs_ranker(
    ws: Workspace, day: int, fields: Fields | None = None, boot: int = 200
) -> dict[str, Any]:
    """The one-hot logistic regression (`eval.baselines.logistic_regression`) on the rows the ranker was
    trained on (every day before `day`; L2 chosen on the last of them, then refit on all), scored on `day`'s
    impressions beside the served ranker, with the paired bootstrap interval of ranker - regression over users.
    `fields`: None = the log's one-hot fields (`dermfeatures.onehot.dataset_fields`, those of the ranker's
    wide part; `ADS_FIELDS` on the synthetic log)."""
    from eval.bootstrap import paired_bootstrap
    from eval.evaluate import ranker_predictions

    ds = ws.dataset()
    fields = dataset_fields(ds) if fields is None else fields
    before = [d for d in ds.days() if d < day]
    t0 = time.perf_counter()
    fit = logistic_regression(read_rows(ds, before[:-1], fields), read_rows(ds, before[-1:], fields), fields)
    test = read_rows(ds, [day], fields)
    lr_logit = fit.model.logits(test)
    cols = ["user_id", "ad_id", "click", "ts", "day", "surface", "position"]
    imp = ds.impressions(day, [c for c in cols if c in ds.columns["impressions"]])
    _, arrays, p_ctr = ranker_predictions(ws, day, imp)
    y = arrays.click
    if not (np.array_equal(test["ad_id"], arrays.ad_id) and np.array_equal(test["click"], y)):
        raise AssertionError("the regression's rows and the ranker's rows differ")
    ci = paired_bootstrap(roc_auc, p_ctr, lr_logit, y, groups=arrays.user_id, n=boot, seed=0)
    return {
        "logistic_roc_auc": roc_auc(lr_logit, y),
        "ranker_roc_auc": roc_auc(p_ctr, y),
        "ranker_minus_logistic_ci": [ci["lo"], ci["hi"]],
        "ranker_minus_logistic": ci["diff"],
        "logistic": fit.to_json(),
        "train_days": before,
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "same rows: the regression learns from every impression before the eval day (the ranker's "
        "window and daily increments), its L2 weight chosen on the last of those days; both are scored on the "
        "eval day's impressions with their logged context; interval: paired bootstrap over users",
    }


# --- retrieval: plain matrix factorisation -----------------------------------------------------------------


@dataclass(frozen=True)
class MFConfig:
    """Plain MF: `dim`-wide id tables, logits cos(u, a) / temperature - log Q(a) over the batch's ads."""

    dim: int = 64
    temperature: float = 0.1
    lr: float = 0.01
    batch_size: int = 1024
    epochs: int = 20
    init_std: float = 0.1
    logq: bool = True
    seed: int = 0
    # learning rate decayed linearly from `lr` to `lr_end` over the run (None: constant)
    lr_end: float | None = None

    def __post_init__(self) -> None:
        if self.dim < 1 or self.batch_size < 2 or self.epochs < 1:
            raise ValueError("dim and epochs must be >= 1, batch_size >= 2 (in-batch negatives)")
        if not (self.temperature > 0 and self.lr > 0 and self.init_std > 0):
            raise ValueError("temperature, lr and init_std must be > 0")
        if self.lr_end is not None and not 0 < self.lr_end <= self.lr:
            raise ValueError("lr_end must be in (0, lr]")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MFModel:
    """Unit-norm embeddings: user_ids int64[n_u] sorted with user_emb float32[n_u, dim], same for ads."""

    user_ids: np.ndarray
    user_emb: np.ndarray
    ad_ids: np.ndarray
    ad_emb: np.ndarray

    @staticmethod
    def _lookup(ids: np.ndarray, emb: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(q, np.int64)
        vecs = np.zeros((len(q), emb.shape[1]), np.float32)
        found = np.zeros(len(q), bool)
        if len(ids):
            pos = np.clip(np.searchsorted(ids, q), 0, len(ids) - 1)
            found = ids[pos] == q
            vecs[found] = emb[pos[found]]
        return vecs, found

    def user_vectors(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32[n, dim], found bool[n]); users not in training get zeros."""
        return self._lookup(self.user_ids, self.user_emb, user_ids)

    def ad_vectors(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32[n, dim], found bool[n]); ads not in training get zeros."""
        return self._lookup(self.ad_ids, self.ad_emb, ad_ids)


def plain_mf(
    user_ids: np.ndarray,
    ad_ids: np.ndarray,
    cfg: MFConfig | None = None,
    on_epoch: Callable[[int, MFModel], None] | None = None,
) -> MFModel:
    """Train plain MF on positive pairs (user_ids, ad_ids int64[n]: one row per click; repeats count).

    Each batch's ads are its candidates; Q(a) = batch_size * count(a) / n is the expected number of columns ad
    a fills per batch (the towers' convention, here exact); another column holding the positive's own ad is
    masked. Dense Adam over both tables, one shuffled pass per epoch (seeded). `on_epoch(epoch, model)` is
    called after every epoch (1-based) with the embeddings so far (a validation curve)."""
    cfg = cfg or MFConfig()
    u_all, a_all = np.asarray(user_ids, np.int64), np.asarray(ad_ids, np.int64)
    if len(u_all) != len(a_all) or len(u_all) == 0:
        raise ValueError(f"need matching, non-empty pairs, got {len(u_all)} users and {len(a_all)} ads")
    users, ui = np.unique(u_all, return_inverse=True)
    ads, ai = np.unique(a_all, return_inverse=True)
    g = torch.Generator().manual_seed(cfg.seed)
    user_t = torch.nn.Parameter(torch.randn(len(users), cfg.dim, generator=g) * cfg.init_std)
    ad_t = torch.nn.Parameter(torch.randn(len(ads), cfg.dim, generator=g) * cfg.init_std)
    opt = torch.optim.Adam([user_t, ad_t], lr=cfg.lr)
    count = np.bincount(ai, minlength=len(ads)).astype(np.float64)
    log_q = torch.from_numpy(np.log(cfg.batch_size * count / len(ai))).float()
    ui_t, ai_t = torch.from_numpy(ui), torch.from_numpy(ai)
    rng = np.random.default_rng(cfg.seed)
    total = cfg.epochs * math.ceil(len(ui) / cfg.batch_size)
    step = 0
    for epoch in range(cfg.epochs):
        perm = torch.from_numpy(rng.permutation(len(ui)))
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            if cfg.lr_end is not None:
                for group in opt.param_groups:
                    group["lr"] = cfg.lr + (cfg.lr_end - cfg.lr) * step / max(1, total - 1)
            step += 1
            if len(idx) < 2:
                continue
            bu, ba = ui_t[idx], ai_t[idx]
            u = F.normalize(user_t[bu], dim=1)
            a = F.normalize(ad_t[ba], dim=1)
            logits = u @ a.T / cfg.temperature
            if cfg.logq:
                logits = logits - log_q[ba].unsqueeze(0)
            same = (ba.unsqueeze(0) == ba.unsqueeze(1)) & ~torch.eye(len(ba), dtype=torch.bool)
            loss = F.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(len(ba)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, _mf_model(users, user_t, ads, ad_t))
    return _mf_model(users, user_t, ads, ad_t)


@torch.no_grad()
def _mf_model(users: np.ndarray, user_t: torch.Tensor, ads: np.ndarray, ad_t: torch.Tensor) -> MFModel:
    u_emb = F.normalize(user_t, dim=1).numpy().astype(np.float32)
    a_emb = F.normalize(ad_t, dim=1).numpy().astype(np.float32)
    return MFModel(users, u_emb, ads, a_emb)
