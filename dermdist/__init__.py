"""Past one machine: the daily cycle's inference on Ray (the `dist` extra). Importing this package does not
import Ray; running the ray engine without it raises EngineError naming `pip install 'derm[dist]'`."""

from dermdist.config import Engine, RayInferenceConfig
from dermdist.infer import EngineError, embed_day_ray, require_ray

__all__ = ["Engine", "EngineError", "RayInferenceConfig", "embed_day_ray", "require_ray"]
