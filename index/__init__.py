"""index: approximate nearest-neighbour search over daily ad embeddings, behind one small protocol.

Backends (faiss factory strings, hnswlib graphs) share one boundary: explicit int64 ids, contiguous float32
L2-normalised vectors, results `(ids int64[n, k], scores float32[n, k])` with higher = better and `-1`/`-inf`
pads. `build_index_artifact` / `load_index_artifact` publish and read an index as a versioned artifact;
`refresh_index_artifact` publishes the next version by an in-place update (stored as a delta over the
hard-linked base files, `index.delta`, or in full) or a rebuild (recorded);
`tune` sweeps nprobe / ef against exact search. `index.versions` does both for a workspace.
"""

from index.artifact import KIND, SCHEMA_VERSION, build_index_artifact, load_index_artifact
from index.backends import make_index
from index.exact import exact_search, recall_against_exact
from index.refresh import RefreshConfig, RefreshMode, Storage, refresh_index_artifact
from index.tune import TunePoint, tune
from index.types import AnnIndex, Backend, IndexConfig, SearchParams

__all__ = [
    "KIND",
    "SCHEMA_VERSION",
    "AnnIndex",
    "Backend",
    "IndexConfig",
    "RefreshConfig",
    "RefreshMode",
    "SearchParams",
    "Storage",
    "TunePoint",
    "build_index_artifact",
    "exact_search",
    "load_index_artifact",
    "make_index",
    "recall_against_exact",
    "refresh_index_artifact",
    "tune",
]
