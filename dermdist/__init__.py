"""Past one machine: the daily cycle's inference (Ray Data) and data-parallel training (Ray Train + torch DDP)
on Ray (the `dist` extra). Importing this package does not import Ray; running the ray engine without it
raises EngineError naming `pip install 'derm[dist]'`."""

from dermdist.config import Engine, RayInferenceConfig, RayTrainConfig
from dermdist.infer import EngineError, embed_day_ray, require_ray
from dermdist.train import train_ranker_ray, train_towers_ray

__all__ = [
    "Engine",
    "EngineError",
    "RayInferenceConfig",
    "RayTrainConfig",
    "embed_day_ray",
    "require_ray",
    "train_ranker_ray",
    "train_towers_ray",
]
