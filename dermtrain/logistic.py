"""The one L2 logistic-regression solver over one-hot features (plus optional real-valued columns), shared by the ranker's fitted wide part
(`ranking.wide`) and the regression baseline (`eval.baselines.fit_logistic`), so both minimise the same
objective the same way."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
) -> tuple[torch.Tensor, float, int, torch.Tensor]:
    """logit_i = sum_j w[x[i, j]] + dense[i] . v + b, fitted by L-BFGS (strong Wolfe line search, float64) from
    (w0, v0, b0): minimises mean log loss + l2 / 2 * (|w|^2 + |v|^2) with the intercept b unpenalised. x: int64
    (n, F) indices into w; dense: float (n, D) real-valued columns (None: none, D = 0); y: float64 (n,) labels.
    Returns (w, b, iterations run, v float64 (D,))."""
    n_dense = 0 if dense is None else int(dense.shape[1])
    xd = torch.zeros((len(y), 0), dtype=torch.float64) if dense is None else dense.double()
    w = w0.detach().double().clone().requires_grad_(True)
    v = (
        torch.zeros(n_dense, dtype=torch.float64) if v0 is None else v0.detach().double().clone()
    ).requires_grad_(True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, v, b], max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logit = w[x].sum(1) + xd @ v + b
        loss = F.binary_cross_entropy_with_logits(logit, y) + 0.5 * l2 * ((w * w).sum() + (v * v).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), float(b.detach()), int(opt.state[w].get("n_iter", 0)), v.detach()
