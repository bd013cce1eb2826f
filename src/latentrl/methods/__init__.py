"""Method presets. Every module in this package is imported here, so a new method file that decorates its class
with `@register_method` joins the registry (and `latentrl bench`) without editing this file."""

import importlib
import pkgutil

from latentrl.methods.base import (
    METHODS,
    TRAINERS,
    Method,
    MethodContext,
    MethodParts,
    get_method,
    register_method,
    register_trainer,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "TRAINERS", "Method", "MethodContext", "MethodParts", "get_method", "register_method",
           "register_trainer"]
