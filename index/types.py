"""The index's types: the one small protocol every ANN backend implements (`AnnIndex`), its build-time config
(`IndexConfig`), query-time knobs (`SearchParams`), the backend names and the padding of missing results.

Every backend speaks the same language at its boundary: ids are explicit int64 (never row positions), vectors
are contiguous float32 `[n, dim]` and L2-normalised (cosine = inner product), and results are
`(ids int64[n, k], scores float32[n, k])` with higher score = better, `-1` / `-inf` padding missing results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dermcore.errors import DermError

NORM_TOL = 1e-3
PAD_ID = -1
PAD_SCORE = -np.inf
DEVICES = ("auto", "cpu", "cuda")
METRICS = ("ip",)


class Backend(StrEnum):
    FAISS = "faiss"
    HNSWLIB = "hnswlib"


@dataclass(frozen=True)
class IndexConfig:
    """Build-time description of an index; its JSON goes into the artifact manifest.

    `spec` is a faiss factory string ("Flat", "IVF1024,Flat", "HNSW32,Flat", "IVF256,PQ16,RFlat") for the faiss
    backend, and "HNSW" or "M16,efc200" (optionally "ef64" for the default query-time ef) for hnswlib.
    `metric` is "ip" on L2-normalised vectors (cosine), the only metric the towers produce.
    """

    backend: Backend = Backend.FAISS
    spec: str = "Flat"
    dim: int = 64
    metric: str = "ip"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "backend", Backend(self.backend))
        except ValueError:
            choices = ", ".join(b.value for b in Backend)
            raise DermError(f"unknown index backend {self.backend!r} (choose from {choices})") from None
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise DermError("index spec must be a non-empty string")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise DermError(f"index dim must be a positive int, got {self.dim!r}")
        if self.metric not in METRICS:
            raise DermError(
                f"unsupported metric {self.metric!r}: only 'ip' on L2-normalised vectors (cosine) is supported"
            )
        if self.device not in DEVICES:
            raise DermError(f"unknown device {self.device!r} (choose from {', '.join(DEVICES)})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DermError(f"seed must be a non-negative int, got {self.seed!r}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["backend"] = self.backend.value
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise DermError(f"unknown index config fields: {sorted(unknown)}")
        return cls(**obj)


@dataclass(frozen=True)
class SearchParams:
    """Query-time knobs, changed without a rebuild: `ef` (HNSW beam width), `nprobe` (IVF lists visited)."""

    ef: int | None = None
    nprobe: int | None = None

    def __post_init__(self) -> None:
        for name in ("ef", "nprobe"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise DermError(f"search param {name} must be a positive int or None, got {v!r}")

    def to_json(self) -> dict[str, int | None]:
        return {"ef": self.ef, "nprobe": self.nprobe}


@runtime_checkable
class AnnIndex(Protocol):
    """What retrieval code may call on any backend (implemented by FaissIndex and HnswIndex)."""

    config: IndexConfig

    def build(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: SearchParams | None = None,
        allowed_ids: np.ndarray | None = None,
        excluded_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path, config: IndexConfig) -> AnnIndex: ...

    @property
    def ntotal(self) -> int: ...

    def ids(self) -> np.ndarray: ...

    def get_vectors(self, ids: np.ndarray) -> np.ndarray: ...

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64[n], vecs float32[n, dim]) of every live entry, in storage order, read in bulk."""
        ...

    def default_params(self) -> SearchParams:
        """The query-time values used when `search` gets no params (resolved: None only where none apply)."""
        ...

    def set_default_params(self, params: SearchParams) -> None:
        """Change the query-time defaults (no rebuild); fields left None keep their current value."""
        ...

    def in_place_blocker(self) -> str | None:
        """Why this index cannot take removals and replacements in place (None: it can)."""
        ...

    def tombstone_fraction_after(self, n_removed: int, n_replaced: int, n_new: int) -> float:
        """Share of stored entries that would be removed-but-kept after removing n_removed ids, replacing the
        vectors of n_replaced and adding n_new (0 where storage compacts)."""
        ...
