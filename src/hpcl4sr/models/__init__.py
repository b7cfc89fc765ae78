"""Models. Importing this package imports every module in it, which registers each model.

A new model is one file here with a `@register("name")` class; `hpcl4sr models` lists it.
"""

import importlib
import pkgutil

from hpcl4sr.models.base import MODELS, ModelConfig, SequentialRecommender, model_class, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "ModelConfig", "SequentialRecommender", "model_class", "register"]
