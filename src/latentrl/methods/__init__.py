"""Method presets. Importing this package registers every built-in method."""

from latentrl.methods.base import METHODS, Method, get_method, register_method
from latentrl.methods import grpo  # noqa: F401  (registers)

__all__ = ["METHODS", "Method", "get_method", "register_method"]
