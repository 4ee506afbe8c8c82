"""dermserve: the online service. `derm serve` runs `create_app(ServiceConfig(...))` on uvicorn: the two-stage
query over HTTP, hot swap of the daily version sets (`dermserve.versions`), micro-batching of concurrent
queries (`dermserve.batcher`), Prometheus metrics, and user embeddings from the workspace's store or from the
online feature store (`embstore.online`)."""

from dermserve.app import create_app, serve
from dermserve.batcher import Batcher, QueryParams
from dermserve.config import ServiceConfig
from dermserve.versions import SetKey, VersionManager, VersionSet, candidate_key, load_set

__all__ = [
    "Batcher",
    "QueryParams",
    "ServiceConfig",
    "SetKey",
    "VersionManager",
    "VersionSet",
    "candidate_key",
    "create_app",
    "load_set",
    "serve",
]
