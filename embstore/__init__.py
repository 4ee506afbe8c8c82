"""embstore: the daily embedding store. Each day's embeddings (the last of the day per entity) are aggregated
into a pool (moving average, latest, or average pooling, with carry-over and a TTL) and published as one immutable,
checked version per day, read through memory-mapped, vectorised lookups. The Redis online store
(`embstore.online`, extra `serve`) is imported on its own."""

from embstore.aggregate import AggregationConfig, Heuristic, Pool, aggregate, stability
from embstore.store import (
    StoreGates,
    StoreVersion,
    check_vectors,
    embeddings_dir,
    open_version,
    publish_day,
)

__all__ = [
    "AggregationConfig",
    "Heuristic",
    "Pool",
    "StoreGates",
    "StoreVersion",
    "aggregate",
    "check_vectors",
    "embeddings_dir",
    "open_version",
    "publish_day",
    "stability",
]
