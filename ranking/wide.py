"""The ranker's wide part fitted like the one-hot regression (`RankerConfig.wide_fit = "regression"`).

One pass of Adam from zero leaves a hashed linear part far from the converged L2 regression (a feature seen a
few hundred times moves by at most lr per step). So, as in Wide & Deep practice where the linear part is a
converged model and the deep part learns what it misses: before the deep part trains, each task's column of
the wide table is fitted by L-BFGS on the training rows' wide features (`WidePart.keys`), minimising mean log
loss + l2 / 2 * |w|^2 over the buckets the rows touch, plus an unpenalised intercept, the objective of
`eval.baselines.fit_logistic` over hashed keys. With `RankerConfig.wide_features = "onehot"` those features are
the regression's own (`dermfeatures.onehot`), so where no two features share a bucket the fitted column is the
regression at the same L2. The L2 weight is chosen from `WIDE_L2` by ROC-AUC on the last
training day (CTR on every row, CVR on the clicked rows), then the column is refitted on every training day.
The intercepts live in the wide part (`WidePart.intercept`), and the task towers' last layers start at zero, so
the ranker starts as the regression and the deep part (with the wide part frozen) learns the residual.

A daily fine-tune refits each column on the window of days the ranker has seen (at most `wide_window` days,
ending with the new day), warm-started from yesterday's weights, with the prior chosen at bootstrap (the L2
weight times the rows it was chosen on, divided by the window's rows).

Dense columns (`RankerConfig.kge_scores`): beside the hashed one-hot keys, real-valued columns (the KGE relation
scores f_r(user, candidate) and their found flags, `ranking.kge`) get one weight per task, fitted in the same
L-BFGS objective with the same L2 (`dermtrain.logistic.lbfgs_logistic`). Why here and not only in the deep
part: the deep part, started at zero logits after the fit, learns a small residual in its one pass (on
kge_ranker.json's synthetic rows every deep input, KGE vectors and DERM embeddings alike, moved CVR ROC-AUC by
< 0.001), while a converged linear model uses a scalar signal fully (`benchmarks/kge_signal.py`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from adslog.oracle import roc_auc
from dermcore.errors import ConfigError
from dermfeatures.batches import ImpressionArrays, Inputs
from dermtrain.logistic import base_rate_logit, lbfgs_logistic
from ranking.model import Ranker

log = logging.getLogger(__name__)

#: L2 weights tried (penalty l2 / 2 * |w|^2 on the mean log loss): `eval.baselines.LR_L2` and two larger ones
#: (on the demo's 7-day bootstrap window the CTR and CVR columns both chose 3e-5, the edge of LR_L2)
WIDE_L2 = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4)
#: the L2 weight when there is no held-out day to choose by (a single training day)
WIDE_DEFAULT_L2 = 1e-5
#: L-BFGS iterations of a daily refit (warm-started from yesterday's weights)
WIDE_REFIT_ITERS = 100


def wide_keys(
    inputs: Inputs,
    a: ImpressionArrays,
    keys_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    chunk: int = 1 << 17,
) -> torch.Tensor:
    """int32 (n, n_features): the wide table row of every feature of impressions `a` (`keys_fn` is
    `WidePart.keys`), built from the one-hot keys (`Inputs.onehot_keys`) when the spec names one-hot fields,
    else from the user / ad categorical rows and the context (no sequence). int32 (the table has fewer than
    2^31 rows: `RankerConfig.wide_buckets`) halves what a refit window's keys hold: at 10M impressions a day,
    a two-day window's 24 keys per row are 1.9 GB."""
    out = []
    for s in range(0, len(a), chunk):
        sl = slice(s, s + chunk)
        if inputs.spec.onehot:
            b = {"onehot": torch.from_numpy(inputs.onehot_keys(a.take(np.arange(s, min(s + chunk, len(a))))))}
        else:
            b = {
                "user_cat": torch.from_numpy(inputs.users.rows(a.user_id[sl])[0]),
                "ad_cat": torch.from_numpy(inputs.ads.rows(a.ad_id[sl])[0]),
                "ctx": torch.from_numpy(a.ctx[sl]),
            }
        out.append(keys_fn(b).to(torch.int32))
    return torch.cat(out) if out else torch.zeros((0, 0), dtype=torch.int32)


def touched_rows(
    keys: torch.Tensor, buckets: int, chunk: int = 1 << 18, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sorted distinct rows int64 (u,) of a `buckets`-row table that `keys` (n, F) touch, and each key's
    position among them int32 (n, F)): `torch.unique(keys, return_inverse=True)` without its sort of every key
    and its int64 copies, `chunk` rows at a time (memory: the int32 result plus a mask and map of the table).
    `inplace` (int32 `keys` only): the positions overwrite `keys` (no second copy of a refit window's keys)."""
    seen = torch.zeros(buckets, dtype=torch.bool)
    for s in range(0, len(keys), chunk):
        seen[keys[s : s + chunk].reshape(-1).long()] = True
    uniq = seen.nonzero().squeeze(1)
    where = torch.full((buckets,), -1, dtype=torch.int32)
    where[uniq] = torch.arange(len(uniq), dtype=torch.int32)
    if inplace and keys.dtype != torch.int32:
        raise ValueError("touched_rows(inplace=True) needs int32 keys")
    inv = keys if inplace else torch.empty(keys.shape, dtype=torch.int32)
    for s in range(0, len(keys), chunk):
        inv[s : s + chunk] = where[keys[s : s + chunk].long()]
    return uniq, inv


@dataclass(frozen=True)
class WideColumn:
    """One task's fitted column: weight float64 (buckets,) (untouched buckets keep their start), intercept,
    the mean-loss L2 weight, whether L-BFGS stopped before `max_iter` iterations, and the weights float64 (D,)
    of the real-valued columns (D = 0 without any)."""

    weight: torch.Tensor
    bias: float
    l2: float
    converged: bool
    dense: torch.Tensor = torch.zeros(0, dtype=torch.float64)


def fit_column(
    keys: torch.Tensor,
    y: np.ndarray,
    l2: float,
    buckets: int,
    start: torch.Tensor | None = None,
    start_bias: float | None = None,
    max_iter: int = 300,
    dense: torch.Tensor | None = None,
    start_dense: torch.Tensor | None = None,
    consume_keys: bool = False,
) -> WideColumn:
    """L2 logistic regression of labels `y` [n] on the hashed one-hot features `keys` int32 / int64 (n, F) (rows of a
    `buckets`-row table) and the real-valued columns `dense` float (n, D) (None: none) by L-BFGS (strong Wolfe,
    float64): mean log loss + l2 / 2 * (|w_touched|^2 + |v|^2) with an unpenalised intercept. `start`
    (buckets,) / `start_bias` / `start_dense` (D,): a warm start (zero / the base-rate logit otherwise).
    `consume_keys`: int32 `keys` are overwritten with their positions among the touched rows (the caller's
    last use of them: a refit window's keys are not copied)."""
    yt = torch.from_numpy(np.asarray(y, np.float64))
    full = torch.zeros(buckets, dtype=torch.float64) if start is None else start.detach().double().clone()
    n_dense = 0 if dense is None else int(dense.shape[1])
    v0 = torch.zeros(n_dense, dtype=torch.float64) if start_dense is None else start_dense.detach().double()
    if len(yt) == 0:
        return WideColumn(full, 0.0 if start_bias is None else start_bias, l2, True, v0.clone())
    uniq, inv = touched_rows(keys, buckets, inplace=consume_keys and keys.dtype == torch.int32)
    b0 = base_rate_logit(yt) if start_bias is None else start_bias
    w, b, iters, v = lbfgs_logistic(inv, yt, full[uniq], b0, l2, max_iter, dense, v0)
    full[uniq] = w
    return WideColumn(full, b, l2, iters < max_iter, v)


def choose_l2(
    train_keys: torch.Tensor,
    train_y: np.ndarray,
    val_keys: torch.Tensor,
    val_y: np.ndarray,
    buckets: int,
    grid: tuple[float, ...] = WIDE_L2,
    train_dense: torch.Tensor | None = None,
    val_dense: torch.Tensor | None = None,
) -> tuple[WideColumn, dict[float, float]]:
    """The fit on the train rows whose L2 weight of `grid` scores the best ROC-AUC on the validation rows (the
    smaller on ties; the largest when validation has one class only), and the ROC-AUC of each weight. The
    weights are fitted from the largest down, each warm-started from the previous solution (fewer steps).
    `train_dense` / `val_dense`: the rows' real-valued columns (`fit_column`), or None for both."""
    by_l2: dict[float, float] = {}
    fits: dict[float, WideColumn] = {}
    prev: WideColumn | None = None
    for l2 in sorted(grid, reverse=True):
        prev = fit_column(
            train_keys,
            train_y,
            l2,
            buckets,
            None if prev is None else prev.weight,
            None if prev is None else prev.bias,
            dense=train_dense,
            start_dense=None if prev is None else prev.dense,
        )
        fits[l2] = prev
        z = prev.weight[val_keys].sum(1) + prev.bias
        if val_dense is not None:
            z = z + val_dense.double() @ prev.dense
        by_l2[l2] = roc_auc(z.numpy(), val_y)
    finite = {k: v for k, v in by_l2.items() if not math.isnan(v)}
    best = max(finite, key=lambda k: (finite[k], -k)) if finite else max(grid)
    return fits[best], dict(sorted(by_l2.items()))


def fit_wide_part(
    ranker: Ranker,
    inputs: Inputs,
    days: list[int],
    label_cutoff_ts: int,
    prior: tuple[float, float] | None = None,
    warm: bool = False,
    max_iter: int = 300,
    dense: Callable[[ImpressionArrays], dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Fit `ranker`'s wide table (in place) on the impressions of `days` (labels as known at
    `label_cutoff_ts`): the CTR column on every row, the CVR column on the clicked rows. With dense columns
    (`RankerConfig.kge_scores`), `dense` gives the impressions' arrays they are read from
    (`ranking.kge.KGELookup.score_features`) and their weights are fitted with the table. `prior`: (ctr, cvr)
    L2 weights on the *summed* log loss, so a window of n rows is fitted at l2 = prior / n (a prior does not
    grow with the data: on the demo, a 13-day refit at the L2 the 7-day window chose scored ROC-AUC 0.7177,
    against 0.7209 at the L2 chosen on 13 days); None = the mean-loss l2 chosen per task on the last of `days`
    (fit on the others) from `WIDE_L2`, then refitted on all (prior = l2 x rows). With
    `warm` the fit starts from the table's weights and intercepts (a daily refit, the deep part untouched);
    otherwise the deep logits are set to 0 (`Ranker.zero_deep_output`), so the ranker starts as the fitted
    regression. Returns what the manifest records (days, rows, l2 and prior per task, the validation ROC-AUC
    of each L2 weight when chosen, convergence)."""
    wide = ranker.wide
    if wide is None or wide.intercept is None:
        raise ConfigError("fitting the wide part needs wide_buckets > 0 and wide_fit 'regression'")
    days = sorted(days)
    a = inputs.impressions(days, label_cutoff_ts=label_cutoff_ts)
    keys = wide_keys(inputs, a, wide.keys)
    xd: torch.Tensor | None = None
    if wide.dense is not None:
        if dense is None:
            raise ConfigError("the wide part has dense columns (kge_scores): fitting it needs their arrays")
        feats = {k: torch.from_numpy(np.asarray(v)) for k, v in dense(a).items()}
        xd = ranker.wide_dense(feats)
        assert xd is not None
    n_rows, click, conversion, row_day = len(a), a.click, a.conversion, a.day
    del a  # the window's other columns (ids, timestamps, context): only the labels and days are read below
    rec: dict[str, Any] = {"days": days, "rows": n_rows}
    chosen, priors, biases = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    # CVR first: the CTR fit (every row) is the keys' last use, so it may overwrite them (`consume_keys`)
    for t, (task, y, rows) in (
        (1, ("cvr", conversion, click > 0)),
        (0, ("ctr", click, np.ones(n_rows, bool))),
    ):
        sel = torch.from_numpy(rows)
        k, yt = (keys, y) if rows.all() else (keys[sel], y[rows])  # no copy of every row's keys
        xt = None if xd is None else xd[sel]
        start = wide.table.weight[:, t] if warm else None
        start_bias = float(wide.intercept[t]) if warm else None
        start_dense = wide.dense[:, t] if warm and wide.dense is not None else None
        if prior is not None:
            best = float(prior[t]) / max(len(yt), 1)
        elif len(days) < 2:
            best, rec[f"{task}_validation_roc_auc_by_l2"] = WIDE_DEFAULT_L2, {}
        else:
            d = row_day[rows]
            tr, va = torch.from_numpy(d < days[-1]), torch.from_numpy(d == days[-1])
            chosen_fit, by_l2 = choose_l2(
                k[tr],
                yt[d < days[-1]],
                k[va],
                yt[d == days[-1]],
                wide.buckets,
                train_dense=None if xt is None else xt[tr],
                val_dense=None if xt is None else xt[va],
            )
            # the refit on every day starts from the chosen fit
            best, start, start_bias = chosen_fit.l2, chosen_fit.weight, chosen_fit.bias
            start_dense = chosen_fit.dense
            rec[f"{task}_validation_roc_auc_by_l2"] = {repr(x): v for x, v in by_l2.items()}
        col = fit_column(
            k,
            yt,
            best,
            wide.buckets,
            start,
            start_bias,
            max_iter,
            xt,
            start_dense,
            consume_keys=task == "ctr",
        )
        with torch.no_grad():
            wide.table.weight[:, t] = col.weight.to(wide.table.weight.dtype)
            if wide.dense is not None:
                wide.dense[:, t] = col.dense.to(wide.dense.dtype)
                rec[f"{task}_dense_weights"] = [float(x) for x in col.dense]
        chosen[t], priors[t], biases[t] = best, best * len(yt), col.bias
        rec[f"{task}_converged"] = col.converged
    with torch.no_grad():
        wide.intercept.copy_(torch.tensor(biases))
    if not warm:
        ranker.zero_deep_output()
    rec["l2"], rec["prior"] = chosen, priors
    log.info("wide part fitted on days %s..%s (%d rows), l2 %s", days[0], days[-1], n_rows, chosen)
    return rec
