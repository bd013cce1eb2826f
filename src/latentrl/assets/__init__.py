"""Checkpoints shipped with latentrl: small from-scratch base models, so demos and benchmarks start in seconds.

Each folder under `models/` is a `save_pretrained` folder (model, word tokenizer, Coconut latent tokens) with the
`training_args.json` and `results.json` of the `latentrl pretrain` run that produced it (the exact command is in
both). `<task>-cot` is the chain-of-thought SFT model (the RL starting point), `<task>-nocot` the no-CoT baseline;
`<task>-coconut` and `<task>-superposition` are latent inits, with the command and result of the run that
trained them in `latent_init.json` (scripts/train_latent_init.py, scripts/train_superposition_init.py).

    from latentrl.assets import model_path
    model = LatentModel.from_pretrained(model_path("icot_mult_4x4-cot"))
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["MODELS_DIR", "DEFAULT_MODEL", "available_models", "model_path", "recorded_num_thoughts", "recorded_scoring",
           "resolve_model"]

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "icot_mult_4x4-cot"
"""The RL starting point of the CPU demo and benchmark (see docs/benchmarks.md, "Base models")."""


def available_models() -> list[str]:
    """Names of the shipped checkpoints (folders with a config.json), sorted."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """The folder of the shipped checkpoint `name`, for `LatentModel.from_pretrained`.

    Raises FileNotFoundError naming the available checkpoints when there is no such model.
    """
    path = MODELS_DIR / name
    if not (path / "config.json").is_file():
        names = available_models()
        listing = ", ".join(names) if names else "none (the package was installed without its assets)"
        raise FileNotFoundError(f"no shipped model {name!r} in {MODELS_DIR}; available models: {listing}")
    return path


def resolve_model(name_or_path: str | os.PathLike[str]) -> str:
    """`name_or_path` as `from_pretrained` should receive it: an existing local path or a hub id unchanged, the
    name of a shipped checkpoint (`icot_mult_4x4-cot`) as its folder. Lets configs say `model_name_or_path:
    icot_mult_4x4-cot` on a machine that has no hub access."""
    text = os.fspath(name_or_path)
    if Path(text).expanduser().exists() or text not in available_models():
        return text
    return str(model_path(text))


LATENT_INIT_FILE = "latent_init.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
"""peft's file in a LoRA folder (`LatentModel.save_pretrained` of an adapted model); it names the base model."""


def recorded_num_thoughts(name_or_path: str | os.PathLike[str]) -> int | None:
    """The thought count a Coconut latent init was trained with (`num_thoughts` in its `latent_init.json`, written
    by scripts/train_latent_init.py), or None when the folder records none. A Coconut model asked for another
    count reads thoughts it never learned (chain_sum-coconut: 93 % at its 7, 9.5 % at 6). A LoRA adapter folder
    without its own record answers for the base model its `adapter_config.json` names."""
    n = _latent_init_record(name_or_path).get("num_thoughts")
    return int(n) if n is not None else None


def recorded_scoring(name_or_path: str | os.PathLike[str]) -> dict[str, str]:
    """How a latent init is scored (`scored_with` in its `latent_init.json`): the registered `method` whose operator
    reads its latents and, where that method's defaults are not the init's settings, the `config` preset (e.g.
    `configs/cpu/latent_grpo.yaml`); {} when the folder records none. Without it a latent init would be evaluated
    as a plain token model, which it is not (chain_sum-coconut: 0 % instead of 93 %)."""
    record = _latent_init_record(name_or_path).get("scored_with") or {}
    if not isinstance(record, dict) or set(record) - {"method", "config"}:
        raise ValueError(f"{name_or_path}: {LATENT_INIT_FILE}'s scored_with must be an object with 'method' and/or "
                         f"'config', got {record!r}")
    return {k: str(v) for k, v in record.items()}


def _latent_init_record(name_or_path: str | os.PathLike[str]) -> dict:
    """The folder's `latent_init.json` (a LoRA adapter's: its base's), {} when it has none."""
    folder = Path(resolve_model(name_or_path)).expanduser()
    path = folder / LATENT_INIT_FILE
    if not path.is_file():
        base = _adapter_base(folder)
        return _latent_init_record(base) if base is not None else {}
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
    return record


def _adapter_base(folder: Path) -> str | None:
    """The base model a LoRA folder's `adapter_config.json` names (None: no adapter, no base, or the folder itself)."""
    config = folder / ADAPTER_CONFIG_FILE
    if (folder / "config.json").is_file() or not config.is_file():
        return None
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except (ValueError, AttributeError):
        return None  # a damaged adapter is reported when the model loads, not here
    if not base or Path(resolve_model(base)).expanduser().resolve() == folder.resolve():
        return None
    return base
