"""Ranker-side helpers of scoring one user's candidates: the forward pass that runs the activity sequence
encoder once per user instead of once per candidate row (`adserving.two_stage.TwoStage.rank_many`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def user_runs(user_ids: np.ndarray) -> np.ndarray:
    """Lengths int64[g] of the runs of equal consecutive user ids (one run per user of a `rank_many` call)."""
    if len(user_ids) == 0:
        return np.zeros(0, np.int64)
    start = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])
    return np.diff(np.r_[start, len(user_ids)])


def forward_shared_sequence(
    ranker: torch.nn.Module, batch: dict[str, torch.Tensor], runs: np.ndarray | None = None
) -> torch.Tensor:
    """`ranker(batch)` for a batch whose rows come in runs sharing one activity sequence (`runs`: their
    lengths; None: one run): the sequence encoder sees the first row of each run only and its output (G, C)
    is repeated to (B, C). A ranker without a `sequence` module runs as is.

    The hooks live on the shared module for the duration of the call: two threads must not run this on one
    ranker at once (the service runs queries on one worker thread)."""
    seq = getattr(ranker, "sequence", None)
    if not isinstance(seq, torch.nn.Module):
        return ranker(batch)
    n = int(batch["seq_kind"].shape[0])
    if runs is None or len(runs) <= 1:

        def first_row(_: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return ({k: v[:1] for k, v in args[0].items()}, *args[1:])

        def repeat(_: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            return out.expand(n, *out.shape[1:])

    else:
        dev = batch["seq_kind"].device
        starts = torch.from_numpy(np.r_[0, np.cumsum(runs)[:-1]]).to(dev)
        counts = torch.from_numpy(np.asarray(runs, np.int64)).to(dev)

        def first_row(_: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return ({k: v.index_select(0, starts) for k, v in args[0].items()}, *args[1:])

        def repeat(_: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            return out.repeat_interleave(counts, dim=0)

    pre, post = seq.register_forward_pre_hook(first_row), seq.register_forward_hook(repeat)
    try:
        out: torch.Tensor = ranker(batch)
        return out
    finally:
        pre.remove()
        post.remove()
