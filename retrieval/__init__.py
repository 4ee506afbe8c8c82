"""retrieval: user id -> pooled user embedding -> ANN over the live ads -> candidates; a cold-start fallback
(user's categories, peers' categories, global popularity) for users without an embedding; an optional
popularity prior (score + beta x log recent click share, beta chosen on a validation day) that re-ranks them;
and the co-click graph (`retrieval.graph_filter`: GF-CF's closed-form filter of the window's clicks) whose top
joins the ANN's candidates, served by score + gamma x its score (gamma chosen on a validation day)."""

from retrieval.cold_start import COLD_START_PATHS, ColdStart
from retrieval.graph_filter import CoClickGraph, GraphConfig, GraphFit, fit_gamma
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
    "CoClickGraph",
    "ColdStart",
    "GraphConfig",
    "GraphFit",
    "LogPrior",
    "PriorConfig",
    "PriorFit",
    "Retriever",
    "apply_prior",
    "fit_beta",
    "fit_gamma",
    "popularity",
    "prior_scores",
    "top_k",
    "window_clicks",
]
