"""Resolving the DLR options of a run. `DLRConfig` itself is the `dlr:` section of `GRPOConfig` (latentrl.config)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latentrl.config import ConfigError, DLRConfig, config_from_dict

__all__ = ["DLRConfig", "resolve_dlr_config"]


def resolve_dlr_config(args: Any, override: DLRConfig | Mapping[str, Any] | None = None) -> DLRConfig:
    """The DLR options of a run: `override`, else `args.dlr` (a DLRConfig-like object or a dict), else defaults."""
    src = override if override is not None else getattr(args, "dlr", None)
    if src is None:
        return DLRConfig()
    if isinstance(src, DLRConfig):
        return src
    if isinstance(src, Mapping):
        return config_from_dict(DLRConfig, dict(src))
    raise ConfigError(f"dlr options must be a DLRConfig or a mapping, got {type(src).__name__}")
