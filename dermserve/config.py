"""The service's one config: where it reads, what it accepts, how it watches for new versions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adserving.two_stage import ServeConfig, UnknownUser
from dermcore.errors import ConfigError
from embstore.online import OnlineStoreConfig


@dataclass(frozen=True)
class ServiceConfig:
    """`derm serve`'s settings. Limits: a request over `max_k`, `max_candidates`, `max_batch` users,
    `max_exclude` excluded ids or `max_body_bytes` is refused (4xx) before any work. `unknown_user`: what a
    user id the dataset does not know gets (error: 404; popular: the popularity fallback).

    watch_interval_s: how often the watcher looks for a newer consistent version set; retry_failed_s: how soon
    a version set that failed to load or check is tried again (unless its versions change first).
    min_recall: the recall@10 against exact search a new set's index must reach on `self_check_queries` of
    its own ad vectors before it is swapped in. batch_window_ms: how long the first request of a micro-batch
    waits for others (0: no micro-batching); max_batch_users: the most users in one ranker pass.
    admin_token: the bearer token of `POST /v1/admin/reload` (None: the endpoint is disabled).
    feature_store: read user embeddings from this online store instead of the workspace's store."""

    work: str
    unknown_user: UnknownUser = UnknownUser.ERROR
    max_k: int = 1000
    max_candidates: int = 5000
    max_batch: int = 256
    max_exclude: int = 10_000
    max_body_bytes: int = 1 << 20
    watch_interval_s: float = 2.0
    retry_failed_s: float = 30.0
    min_recall: float = 0.9
    self_check_queries: int = 100
    batch_window_ms: float = 2.0
    max_batch_users: int = 16
    admin_token: str | None = None
    feature_store: OnlineStoreConfig | None = None
    device: str = "cpu"
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "unknown_user", UnknownUser(self.unknown_user))
        except ValueError:
            raise ConfigError(
                f"unknown_user must be one of {', '.join(u.value for u in UnknownUser)}, "
                f"got {self.unknown_user!r}"
            ) from None
        for name in (
            "max_k",
            "max_candidates",
            "max_batch",
            "max_exclude",
            "max_body_bytes",
            "self_check_queries",
            "max_batch_users",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_candidates < self.max_k:
            raise ConfigError("max_candidates must be >= max_k")
        default = ServeConfig()
        if self.max_k < default.k or self.max_candidates < default.candidates:
            raise ConfigError(  # a request with the default k and candidates must be accepted
                f"max_k must be >= {default.k} and max_candidates >= {default.candidates} (the query defaults)"
            )
        for name in ("watch_interval_s", "retry_failed_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")
        if not 0.0 <= self.batch_window_ms <= 1000.0:
            raise ConfigError("batch_window_ms must be in [0, 1000]")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ConfigError("min_recall must be in [0, 1]")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ConfigError("admin_token must be at least 16 characters")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError("torch_threads must be >= 1")

    def to_json(self) -> dict[str, Any]:
        """The config as served by /v1/versions (the token never; the store URL without a password)."""
        return {
            "work": self.work,
            "unknown_user": self.unknown_user.value,
            "max_k": self.max_k,
            "max_candidates": self.max_candidates,
            "max_batch": self.max_batch,
            "max_exclude": self.max_exclude,
            "max_body_bytes": self.max_body_bytes,
            "watch_interval_s": self.watch_interval_s,
            "retry_failed_s": self.retry_failed_s,
            "min_recall": self.min_recall,
            "self_check_queries": self.self_check_queries,
            "batch_window_ms": self.batch_window_ms,
            "max_batch_users": self.max_batch_users,
            "admin_reload": self.admin_token is not None,
            "feature_store": self.feature_store.display if self.feature_store else None,
            "device": self.device,
        }


TOKEN_ENV = "DERM_ADMIN_TOKEN"


def load_admin_token(path: str | None = None) -> str | None:
    """The admin bearer token: the stripped contents of `path`, else $DERM_ADMIN_TOKEN, else None (admin
    reload disabled). A named file that is missing or empty is an error, not a silently disabled endpoint."""
    import os
    from pathlib import Path

    from dermcore.errors import DataError

    if path is not None:
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(path, f"unreadable admin token file ({e})") from None
        if not token:
            raise DataError(path, "admin token file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None
