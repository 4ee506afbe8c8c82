"""Losses of the upstream model's training task.

In-batch sampled softmax with logQ correction (Yi et al., RecSys 2019, "Sampling-bias-corrected neural
modeling"): for each positive (user, ad) pair in the batch, the candidates are the Pin embeddings of all ads in
the batch. logit(i, j) = u_i . p_j / tau - log Q(ad_j), for the positive and the negatives alike, where Q(ad) is a
streaming estimate of the probability that the ad is in a batch's candidate set. Popular ads appear as negatives
more often than their share of positives; subtracting log Q removes that bias. Accidental hits (another
candidate column holding the same ad as the positive) are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CandidateFrequency(nn.Module):
    """Streaming estimate of Q(ad), the expected number of candidate columns an ad fills in a batch, over
    hashed ad buckets: counts <- decay * counts + occurrences in the batch; batches <- decay * batches + 1;
    Q = counts / batches.

    For all but the most frequent ads this is the probability that the ad is in a batch's candidate set. For a
    popular ad that fills many columns it is more than 1, and it must be: each of its columns is a separate
    negative in the softmax denominator, so the correction has to remove log(expected count), as TF's
    `sampled_softmax_loss` does. Capping Q at 1 under-corrects popular ads and pushes them down (we measured
    recall@100 0.387 -> see CHANGELOG for the fix's effect). Buffers are part of the training state, so an
    incremental step resumes with the same estimate.
    """

    counts: torch.Tensor
    batches: torch.Tensor

    def __init__(self, buckets: int, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("counts", torch.zeros(buckets, dtype=torch.float64))
        self.register_buffer("batches", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, buckets: torch.Tensor) -> None:
        occurrences = torch.bincount(buckets, minlength=len(self.counts)).to(self.counts.dtype)
        self.counts.mul_(self.decay).add_(occurrences)
        self.batches.mul_(self.decay).add_(1.0)

    def log_q(self, buckets: torch.Tensor, extra: torch.Tensor | float = 0.0) -> torch.Tensor:
        """log of each bucket's expected count among a batch's candidates; `extra`: the expected count each
        ad has among candidates sampled besides the batch (mixed negative sampling), added before the log."""
        q = self.counts[buckets] / self.batches.clamp(min=1e-12) + extra
        return q.clamp(min=1e-6).log().float()


def sampled_softmax_loss(
    user_emb: torch.Tensor,
    cand_emb: torch.Tensor,
    pos_index: torch.Tensor,
    cand_ids: torch.Tensor,
    log_q: torch.Tensor | None,
    tau: torch.Tensor,
) -> torch.Tensor:
    """Mean cross-entropy of each positive against the batch's candidates.

    user_emb: (P, D) user embeddings of the positive pairs; cand_emb: (B, D) Pin embeddings of every candidate;
    pos_index: int64 (P,) column of each positive's own ad among the candidates; cand_ids: int64 (B,) ad ids of
    the candidates (for masking accidental hits); log_q: (B,) log Q of each candidate or None (no correction);
    tau: scalar temperature.
    """
    logits = user_emb @ cand_emb.T / tau  # (P, B)
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same_ad = cand_ids.unsqueeze(0) == cand_ids[pos_index].unsqueeze(1)  # (P, B)
    own = torch.zeros_like(same_ad)
    own[torch.arange(len(pos_index)), pos_index] = True
    logits = logits.masked_fill(same_ad & ~own, float("-inf"))
    return F.cross_entropy(logits, pos_index)


def multitask_bce(
    logits: torch.Tensor,
    click: torch.Tensor,
    conversion: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CTR BCE over all rows, CVR BCE over clicked rows: post-click conversion) for logits (B, 2) = (ctr, cvr)
    and float32 labels (B,). A batch without clicks gives a CVR loss of 0 that keeps the graph. `weight` (B,):
    the rows' weights (negative downsampling: `ImpressionArrays.weight`); the CTR loss is then the weighted
    mean sum(w * bce) / sum(w) (self-normalised, so its scale is the full day's mean loss). Clicked rows are
    never downsampled, so the CVR loss is unweighted."""
    if weight is None:
        l_ctr = F.binary_cross_entropy_with_logits(logits[:, 0], click)
    else:
        w = weight.to(logits.dtype)
        l_ctr = (
            F.binary_cross_entropy_with_logits(logits[:, 0], click, reduction="none") * w
        ).sum() / w.sum()
    clicked = click > 0
    l_cvr = (
        F.binary_cross_entropy_with_logits(logits[clicked, 1], conversion[clicked])
        if clicked.any()
        else logits.sum() * 0.0
    )
    return l_ctr, l_cvr
