"""The starting checkpoints of the CPU suite that are built, not shipped: a task's shipped CoT model after Coconut
curriculum SFT (`coconut_sft`, for coconut_grpo / latent_rl) or after superposition SFT (`superposition_sft`, for
latent_grpo). Each is built once into a cache folder (written under a temporary name, then renamed, so a crash
never leaves a half-written checkpoint that a later run would take as built). `latentrl bench` registers them.

`task` is a `latentrl.bench.SuiteTask` (any object with `cot_model`, `dataset`, `dataset_kwargs`,
`eval_examples(n)` and, for Coconut, nothing else): the SFT code below it never needs the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from latentrl.assets import model_path
from latentrl.checkpoint import atomic_write_json
from latentrl.config import SHIPPED_CONFIGS, config_to_dict, load_config
from latentrl.data import load_examples
from latentrl.model import LatentModel

__all__ = ["COCONUT_SFT_PRESET", "build_coconut_init", "build_superposition_init", "cached_checkpoint"]

COCONUT_SFT_PRESET = SHIPPED_CONFIGS / "cpu" / "coconut_sft.yaml"
COCONUT_QUICK_STEPS = 20
SUPERPOSITION_TRAIN_EXAMPLES = 2000
SUPERPOSITION_STEPS, SUPERPOSITION_QUICK_STEPS = 300, 60


def cached_checkpoint(out: Path, build: Callable[[Path], None]) -> Path:
    """`out` if it holds a checkpoint, else `build(tmp)` into a temporary folder renamed to `out` when complete."""
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    build(tmp)
    if out.exists():  # a concurrent build finished first
        return out
    tmp.rename(out)
    return out


def build_coconut_init(task: Any, cache: Path | str, quick: bool, preset: Path | str | None = None,
                       overrides: Sequence[str] = ()) -> Path:
    """The `coconut_sft` starting checkpoint of a CPU-suite task: the task's shipped CoT model after Coconut
    curriculum SFT with `configs/cpu/coconut_sft.yaml`. `quick` caps training at COCONUT_QUICK_STEPS optimizer
    steps and skips the per-stage evaluations."""
    from latentrl.sft.coconut import CoconutConfig, train_coconut

    def build(tmp: Path) -> None:
        extra = [f"max_steps={COCONUT_QUICK_STEPS}", "eval_strategy=no"] if quick else []
        cfg = load_config(CoconutConfig, preset or COCONUT_SFT_PRESET, [*extra, "disable_tqdm=true", *overrides])
        source = model_path(task.cot_model)
        model = LatentModel.from_pretrained(source, add_latent_tokens=True)
        train = load_examples(task.dataset, split="train", n=cfg.num_train_examples, seed=cfg.seed,
                              **task.dataset_kwargs)
        evals = [] if quick else task.eval_examples(cfg.num_eval_examples)
        history = train_coconut(cfg, model, train, evals)
        model.save_pretrained(tmp)
        atomic_write_json(tmp / "coconut_sft.json", {
            "config": config_to_dict(cfg), "source": str(source), "stages": history.stages, "steps": history.steps,
            "train": history.train[-1:], "eval": history.eval, "train_wall_s": history.train_wall_s,
        })

    return cached_checkpoint(Path(cache) / ("coconut_sft-quick" if quick else "coconut_sft"), build)


def build_superposition_init(task: Any, cache: Path | str, quick: bool) -> Path:
    """The `superposition_sft` starting checkpoint of a CPU-suite task: the task's shipped CoT model after
    superposition SFT on SUPERPOSITION_TRAIN_EXAMPLES of its training data (SUPERPOSITION_STEPS steps; quick:
    SUPERPOSITION_QUICK_STEPS)."""
    from latentrl.sft.superposition import SuperpositionSFTConfig, train_superposition_sft

    def build(tmp: Path) -> None:
        source = model_path(task.cot_model)
        model = LatentModel.from_pretrained(source)
        train = load_examples(task.dataset, split="train", n=SUPERPOSITION_TRAIN_EXAMPLES, seed=0,
                              **task.dataset_kwargs)
        cfg = SuperpositionSFTConfig(max_steps=SUPERPOSITION_QUICK_STEPS if quick else SUPERPOSITION_STEPS,
                                     disable_tqdm=True)
        history = train_superposition_sft(cfg, model, train)
        model.save_pretrained(tmp)
        atomic_write_json(tmp / "superposition_sft.json", {"config": config_to_dict(cfg),
                                                            "train": history.train[-1:], "source": str(source)})

    return cached_checkpoint(Path(cache) / ("superposition_sft-quick" if quick else "superposition_sft"), build)
