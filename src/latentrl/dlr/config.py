"""Resolving and checking the DLR options of a run. `DLRConfig` itself is the `dlr:` section of `GRPOConfig`
(latentrl.config)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from latentrl.config import ConfigError, DLRConfig, config_from_dict

__all__ = ["DLRConfig", "freeze_main_model", "resolve_dlr_config"]


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


def freeze_main_model(model: Any, args: Any, method: str) -> None:
    """The run checks both DLR methods share (no KL term, no `latent.operator`: the assistant forms the latents),
    then the main model's parameters are frozen: never trained, never in the optimizer."""
    if args.beta > 0:
        raise ConfigError(f"method {method!r} keeps the main model frozen, so there is no KL term: set beta=0 "
                          f"(got {args.beta})")
    if args.latent.operator != "none":
        raise ConfigError(f"method {method!r} forms its latents with the assistant: leave latent.operator=none (got "
                          f"{args.latent.operator!r}) and set the chain length with dlr.num_latent_steps")
    if model.is_peft:
        warnings.warn(f"method {method!r} keeps the main model frozen, LoRA adapters included: only the assistant "
                      "trains (lora.enabled changes nothing but the main model's forward cost)", stacklevel=3)
    model.model.requires_grad_(False)
