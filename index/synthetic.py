"""Seeded clustered vectors with planted structure, for index tests and benchmarks.

Ads sit around planted cluster centres (so neighbourhoods are local and ANN is non-trivial); queries are
user-like: drawn near a centre with their own, larger noise, never copies of indexed vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dermcore.errors import DermError


@dataclass(frozen=True)
class ClusteredConfig:
    n: int = 100_000
    dim: int = 64
    n_clusters: int = 1_000
    ad_noise: float = 0.5
    query_noise: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n, self.dim, self.n_clusters) <= 0:
            raise DermError("n, dim and n_clusters must be positive")
        if self.ad_noise < 0 or self.query_noise < 0:
            raise DermError("noise scales must be >= 0")


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


class ClusteredData:
    """ids int64[n] (sparse, large: never row positions), vecs float32[n, dim] unit-norm, `queries(m)`."""

    def __init__(self, cfg: ClusteredConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        # centres with per-coordinate scale 1/sqrt(dim): noise is relative to a unit-norm centre
        self.centers = normalise(rng.standard_normal((cfg.n_clusters, cfg.dim)))
        self.ids = (10**9 + 13 * np.arange(cfg.n)).astype(np.int64)
        self.vecs = self._around(rng, cfg.n, cfg.ad_noise)

    def _around(self, rng: np.random.Generator, m: int, noise: float, chunk: int = 1 << 18) -> np.ndarray:
        out = np.empty((m, self.cfg.dim), np.float32)
        scale = noise / np.sqrt(self.cfg.dim)
        for lo in range(0, m, chunk):
            hi = min(m, lo + chunk)
            c = self.centers[rng.integers(0, self.cfg.n_clusters, hi - lo)]
            out[lo:hi] = normalise(c + scale * rng.standard_normal((hi - lo, self.cfg.dim), np.float32))
        return out

    def queries(self, m: int, seed: int = 1) -> np.ndarray:
        """float32[m, dim] user-like queries: near a centre, with their own noise."""
        return self._around(np.random.default_rng(self.cfg.seed * 1000 + seed), m, self.cfg.query_noise)

    def new_vectors(self, m: int, seed: int = 2) -> np.ndarray:
        """float32[m, dim] fresh ad vectors from the same distribution (new or re-embedded ads)."""
        return self._around(np.random.default_rng(self.cfg.seed * 1000 + seed), m, self.cfg.ad_noise)
