"""Models. Importing this package imports every module in it, which registers each model.

A new model is one file here with a `@register("name")` class; `hpcl4sr models` lists it.
"""

import importlib
import pkgutil
from typing import Any

from hpcl4sr.models.base import MODELS, ModelConfig, SequentialRecommender, model_class, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def requested_model(name: str | None, layers: list[dict[str, Any]]) -> str | None:
    """The model a command asks for: `name` (--model) when given, else the `model_name` of the first config
    layer (a --config file) that names one; None when neither does. The name is checked when it is built."""
    return name or next((layer["model_name"] for layer in layers if "model_name" in layer), None)


__all__ = ["MODELS", "ModelConfig", "SequentialRecommender", "model_class", "register", "requested_model"]
