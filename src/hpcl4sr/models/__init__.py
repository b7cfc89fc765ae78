"""Models. Importing this package registers every model; `hpcl4sr models` lists them."""

from hpcl4sr.models import comirec_sa, hpcl4sr  # noqa: F401
from hpcl4sr.models.base import MODELS, ModelConfig, SequentialRecommender, model_class, register

__all__ = ["MODELS", "ModelConfig", "SequentialRecommender", "model_class", "register"]
