"""Dispatch from a backend name to its `AnnIndex` implementation. Each backend module is imported lazily, when
an index of its kind is made or loaded: it pulls in its library (faiss, hnswlib), and the backends import the
types, boundary checks and exact search, never this module, so the package has no import cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dermcore.errors import DermError
from index.types import AnnIndex, Backend, IndexConfig

if TYPE_CHECKING:
    from index.faiss_backend import FaissIndex
    from index.hnsw_backend import HnswIndex


def index_class(backend: Backend) -> type[FaissIndex] | type[HnswIndex]:
    """The AnnIndex implementation for `backend` (imported lazily: each backend pulls in its library)."""
    if backend is Backend.FAISS:
        from index.faiss_backend import FaissIndex

        return FaissIndex
    if backend is Backend.HNSWLIB:
        from index.hnsw_backend import HnswIndex

        return HnswIndex
    raise DermError(f"unknown index backend {backend!r}")


def make_index(config: IndexConfig) -> AnnIndex:
    """An empty index for `config`; call `build(ids, vecs)` next."""
    index: AnnIndex = index_class(config.backend)(config)
    return index
