"""The one L2 logistic-regression solver over one-hot features (plus optional real-valued columns), shared by the
ranker's fitted wide part (`ranking.wide`) and the regression baseline (`eval.baselines.fit_logistic`), so both
minimise the same objective the same way.

The loss and its gradient are summed over chunks of `LBFGS_CHUNK` rows in closed form (no autograd graph over the
rows), so the solver's memory beyond its inputs is O(chunk x features) plus O(weights), whatever the number of
rows: a 20M-row window's refit no longer holds a float64 gather of every row's weights and its gradient
(`benchmarks/scale.py`'s daily peak at 1M impressions was this solver's autograd graph)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: rows per chunk of the loss / gradient sums (with 20 one-hot features, ~13 MB of float64 gathers per chunk)
LBFGS_CHUNK = 1 << 16


def base_rate_logit(y: torch.Tensor) -> float:
    """The logit of the mean label (clipped to [1e-6, 1 - 1e-6]; 0.5 for no rows)."""
    rate = min(max(float(y.mean()), 1e-6), 1 - 1e-6) if len(y) else 0.5
    return math.log(rate / (1 - rate))


def lbfgs_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    w0: torch.Tensor,
    b0: float,
    l2: float,
    max_iter: int = 300,
    dense: torch.Tensor | None = None,
    v0: torch.Tensor | None = None,
    chunk: int = LBFGS_CHUNK,
) -> tuple[torch.Tensor, float, int, torch.Tensor]:
    """logit_i = sum_j w[x[i, j]] + dense[i] . v + b, fitted by L-BFGS (strong Wolfe line search, float64) from
    (w0, v0, b0): minimises mean log loss + l2 / 2 * (|w|^2 + |v|^2) with the intercept b unpenalised. x: integer
    (n, F) indices into w (int32 or int64); dense: float (n, D) real-valued columns (None: none, D = 0); y: float
    (n,) labels. Returns (w, b, iterations run, v float64 (D,)). The sums run over `chunk` rows at a time."""
    n, n_dense = len(y), (0 if dense is None else int(dense.shape[1]))
    w = w0.detach().double().clone()
    v = torch.zeros(n_dense, dtype=torch.float64) if v0 is None else v0.detach().double().clone()
    b = torch.tensor(float(b0), dtype=torch.float64)
    params = [w, v, b]
    opt = torch.optim.LBFGS(params, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    scale = 1.0 / max(n, 1)

    def closure() -> torch.Tensor:
        gw, gv, gb = torch.zeros_like(w), torch.zeros_like(v), torch.zeros((), dtype=torch.float64)
        total = torch.zeros((), dtype=torch.float64)
        for s in range(0, n, chunk):
            xc = x[s : s + chunk].long()
            yc = y[s : s + chunk].double()
            z = w[xc].sum(1) + b
            if dense is not None:
                dc = dense[s : s + chunk].double()
                z = z + dc @ v
            # mean log loss, summed here: softplus(z) - y z, and its derivative sigmoid(z) - y
            total += (F.softplus(z) - yc * z).sum()
            r = torch.sigmoid(z) - yc
            gw.index_add_(0, xc.reshape(-1), r.repeat_interleave(xc.shape[1]))
            gb += r.sum()
            if dense is not None:
                gv += dc.T @ r
        w.grad = gw * scale + l2 * w
        v.grad = gv * scale + l2 * v
        b.grad = gb * scale
        return total * scale + 0.5 * l2 * ((w * w).sum() + (v * v).sum())

    opt.step(closure)
    return w, float(b), int(opt.state[w].get("n_iter", 0)), v
