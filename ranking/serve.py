"""Two-stage serving: retrieve candidates by ANN, score them with the ranker, return the top k.

One function call answers a user: `query(ws, user_id, k)`. Results are ordered by the ranker's CTR probability
(`rank_score`) at the reference context (position fixed to the top slot); the eCPM auction order and the
per-advertiser cap come with the ranker issue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adslog.errors import DermError
from adslog.sequences import ActivityLog
from adslog.workspace import Workspace, version_name
from ranking.train import DermLookup, RankerSnapshot, load_ranker, score
from retrieval.retrieve import Retriever
from towers.batches import ImpressionArrays, Inputs
from towers.features import reference_context
from towers.train import resolve_device


def serving_day(ws: Workspace) -> int:
    """The day a workspace serves: the day after the newest version live in both the store and the index."""
    d = ws.serving_version([ws.embeddings_dir("ctr"), ws.index_dir], 2**31 - 1)
    if d is None:
        d = ws.latest_day(ws.embeddings_dir("ctr"))
    if d is None:
        raise DermError(
            f"{ws.root}: nothing is published in this workspace (run `derm demo` or `derm daily`)"
        )
    return d + 1


class TwoStage:
    """Retriever + ranker for one query day, loaded once and reused for many users."""

    def __init__(
        self, ws: Workspace, day: int | None = None, allow_skew: bool = False, device: str = "cpu"
    ) -> None:
        self.ws = ws
        self.ds = ws.dataset()
        self.day = serving_day(ws) if day is None else int(day)
        self.retriever = Retriever(ws, self.day, self.ds, allow_skew=allow_skew)
        rday = ws.version_before(ws.ranker_dir, self.day)
        self.ranker: RankerSnapshot | None = (
            load_ranker(Path(ws.ranker_dir) / version_name(rday), resolve_device(device))
            if rday is not None
            else None
        )
        self.inputs: Inputs | None = None
        if self.ranker is not None:
            last = min(self.day - 1, self.ds.last_day)
            self.inputs = Inputs(
                self.ds, self.ranker.spec, ActivityLog.from_dataset(self.ds, last), self.ranker.config.seq_len
            )
            self.lookup = DermLookup(ws, self.ranker.config.derm_inputs)

    @property
    def versions(self) -> dict[str, str]:
        v = dict(self.retriever.versions)
        if self.ranker is not None:
            v["ranker"] = self.ranker.version
        return v

    def rank(self, user_id: int, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_ctr, p_cvr) of candidate ads for one user at the reference context."""
        if self.ranker is None or self.inputs is None or len(cand) == 0:
            return np.zeros(len(cand), np.float32), np.zeros(len(cand), np.float32)
        n = len(cand)
        ctx = reference_context(self.ranker.spec, n)
        a = ImpressionArrays(
            user_id=np.full(n, user_id, np.int64),
            ad_id=cand.astype(np.int64),
            ts=np.full(n, self.day * 86400, np.int64),
            day=np.full(n, self.day, np.int32),
            click=np.zeros(n, np.float32),
            conversion=np.zeros(n, np.float32),
            ctx=ctx,
            ctx_ref=ctx,
        )
        derm = self.lookup.features(a, int(self.ranker.manifest["derm_dim"]))
        return score(self.ranker, self.inputs, a, derm, reference_context=True)

    def query(self, user_id: int, k: int = 20, candidates: int | None = None) -> dict[str, Any]:
        if k < 1:
            raise DermError("k must be >= 1")
        n_cand = max(k, candidates or k * 5)
        c = self.retriever.retrieve(np.array([user_id], np.int64), n_cand)
        ids, scores = c.ids[0], c.scores[0]
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep]
        p_ctr, _p_cvr = self.rank(user_id, ids)
        order = np.lexsort((ids, -p_ctr))[:k]
        results = [
            {"ad_id": int(ids[i]), "score": _num(scores[i]), "rank_score": float(p_ctr[i]), "rank": r + 1}
            for r, i in enumerate(order)
        ]
        return {
            "user_id": int(user_id),
            "day": self.day,
            "path": c.path[0],
            "versions": self.versions,
            "results": results,
        }


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def query(
    ws: Workspace,
    user_id: int,
    k: int = 20,
    candidates: int | None = None,
    day: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The two-stage answer for one user as the `derm query --json` document."""
    return TwoStage(ws, day, device=device).query(user_id, k, candidates)
