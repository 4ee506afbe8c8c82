"""retrieval: user id -> pooled user embedding -> ANN over the live ads -> candidates; a cold-start fallback
(user's categories, peers' categories, global popularity) for users without an embedding."""

from retrieval.cold_start import COLD_START_PATHS, ColdStart
from retrieval.retrieve import Candidates, Retriever, popularity, window_clicks

__all__ = ["COLD_START_PATHS", "Candidates", "ColdStart", "Retriever", "popularity", "window_clicks"]
