"""Engine choice and the Ray engine's config. No Ray import here: the configs load without the `dist` extra."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dermcore.errors import ConfigError


class Engine(StrEnum):
    """Where the daily cycle's inference runs: this process (`local`, the default) or a Ray cluster (`ray`)."""

    LOCAL = "local"
    RAY = "ray"

    @classmethod
    def parse(cls, value: str) -> Engine:
        """The engine named `value`, or ConfigError listing the choices."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"engine must be local or ray, got {value!r}") from None


@dataclass(frozen=True)
class RayInferenceConfig:
    """Ray Data batch inference of a day's users and ads.

    address: the cluster to join (`ray.init(address=...)`: "auto", "ray://HEAD:10001", ...); None joins the
    cluster named by RAY_ADDRESS, or starts a local one. Ignored when this process already joined one.
    actors: size of the actor pool (each actor loads the tower snapshot, the dataset's entity tables and the
    day's activity log once); None: one actor per `cpus_per_actor` CPUs of the cluster.
    batch_size: ids per `map_batches` call (and per block, so batches spread over the actors).
    cpus_per_actor: CPUs each actor reserves; its torch uses as many threads.
    """

    address: str | None = None
    actors: int | None = None
    batch_size: int = 4096
    cpus_per_actor: float = 1.0

    def __post_init__(self) -> None:
        if self.actors is not None and (isinstance(self.actors, bool) or self.actors < 1):
            raise ConfigError(f"ray actors must be >= 1 (or null: one per cluster CPU), got {self.actors}")
        if self.batch_size < 1:
            raise ConfigError(f"ray batch_size must be >= 1, got {self.batch_size}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"ray cpus_per_actor must be > 0, got {self.cpus_per_actor}")


@dataclass(frozen=True)
class RayTrainConfig:
    """Data-parallel training on Ray Train (`dermdist.train`).

    workers: processes in the torch.distributed group (1 reproduces the single-process run).
    address: the cluster to join, as `RayInferenceConfig.address`.
    cpus_per_worker: CPUs each worker reserves; its torch uses as many threads.
    timeout_s: how long a collective waits for a peer before the group fails.
    """

    workers: int = 2
    address: str | None = None
    cpus_per_worker: float = 1.0
    timeout_s: int = 300

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"train_workers must be an integer >= 1 (or null), got {self.workers!r}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"ray cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.timeout_s < 1:
            raise ConfigError(f"ray timeout_s must be >= 1, got {self.timeout_s}")
