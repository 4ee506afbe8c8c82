"""retrieval: user id -> pooled user embedding -> ANN over the live ads -> candidates; a cold-start fallback
(user's categories, peers' categories, global popularity) for users without an embedding; an optional
popularity prior (score + beta x log recent click share, beta chosen on a validation day) that re-ranks them."""

from retrieval.cold_start import COLD_START_PATHS, ColdStart
from retrieval.prior import (
    DEFAULT_BETAS,
    LogPrior,
    PriorConfig,
    PriorFit,
    apply_prior,
    fit_beta,
    prior_scores,
    top_k,
)
from retrieval.retrieve import Candidates, Retriever, popularity, window_clicks

__all__ = [
    "COLD_START_PATHS",
    "DEFAULT_BETAS",
    "Candidates",
    "ColdStart",
    "LogPrior",
    "PriorConfig",
    "PriorFit",
    "Retriever",
    "apply_prior",
    "fit_beta",
    "popularity",
    "prior_scores",
    "top_k",
    "window_clicks",
]
