"""Train the small base models the CPU demo and benchmark start from: a from-scratch Qwen2 per task, CoT and no-CoT.

No model hub is reachable on the machines this project is built on, so the project trains its own reasoning model
(design.md, "Models and data on these machines"): a word tokenizer over the task's vocabulary (plus the Coconut
latent tokens, so every later method can start from the same checkpoint), a seeded, randomly initialised small
Qwen2, and supervised fine-tuning on generated data twice, once with the chain of thought in the target (the RL
starting point) and once without it (the baseline latent reasoning has to beat). Both are evaluated with greedy
decoding on held-out generated problems and, for iCoT multiplication, on the real iCoT validation file.

    latentrl pretrain --config configs/pretrain_icot_mult_4x4.yaml [key=value ...] [--real-eval PATH]

Output (`output_dir`):
    <name>-cot/, <name>-nocot/   save_pretrained folders (model, tokenizer, latent tokens) with training_args.json,
                                 results.json, metrics.jsonl and curves.png
    results.json                 both models' numbers and the command that reproduces them
    curves.png                   CoT vs no-CoT: training loss and held-out greedy Pass@1 against step
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from latentrl.config import BaseConfig, ConfigError, cfg_field, config_help, config_to_dict, load_config
from latentrl.sft.cot import CoTSFTConfig, SFTHistory, train_sft

__all__ = [
    "ModelShape",
    "PretrainConfig",
    "build_base_model",
    "default_real_eval_path",
    "pretrain",
    "pretrain_main",
]

MODE_SUFFIX = {"cot": "cot", "no_cot": "nocot"}
RESULTS_FILE = "results.json"
TRAINING_ARGS_FILE = "training_args.json"
CURVES_FILE = "curves.png"


@dataclasses.dataclass(kw_only=True)
class ModelShape(BaseConfig):
    """Shape of the from-scratch Qwen2 base model."""

    hidden_size: int = cfg_field(128, "Width of the residual stream.", min=8)
    num_hidden_layers: int = cfg_field(2, "Number of transformer blocks.", min=1)
    num_attention_heads: int = cfg_field(4, "Attention heads per block (must divide hidden_size).", min=1)
    num_key_value_heads: int = cfg_field(4, "Key/value heads (grouped-query attention; must divide the heads).", min=1)
    intermediate_size: int = cfg_field(512, "Width of the MLP's hidden layer.", min=1)
    max_position_embeddings: int = cfg_field(256, "Longest sequence (prompt + completion) the model is built for.", min=8)
    rope_theta: float = cfg_field(10000.0, "RoPE base frequency.", min=0.0, min_exclusive=True)
    tie_word_embeddings: bool = cfg_field(True, "Share the input embedding and LM head matrices (halves the vocab rows).")

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"model.num_key_value_heads ({self.num_key_value_heads})"
            )


@dataclasses.dataclass(kw_only=True)
class PretrainConfig(BaseConfig):
    """Options of `latentrl pretrain`: a from-scratch base model per task, trained with and without CoT."""

    task: str = cfg_field("icot_mult", "Synthetic task to generate training and held-out data from (data/tasks.py).")
    difficulty: dict[str, Any] = cfg_field(
        {}, "Task knobs, e.g. {digits: 4} for icot_mult or {length: 8, modulus: 10, ops: '+'} for chain_sum."
    )
    name: str | None = cfg_field(
        None, "Prefix of the model folders (<name>-cot, <name>-nocot); null = the task name."
    )
    output_dir: str = cfg_field("runs/pretrain", "Where the model folders, metrics, plots and results.json go.")
    overwrite_output_dir: bool = cfg_field(
        False,
        "An output_dir that holds an earlier pretrain run (results.json, the model folders) is refused, so runs "
        "never mix; true replaces the earlier run once the data are generated.",
    )
    seed: int = cfg_field(0, "Seed of the data split, the weight initialisation and the data order.")
    modes: list[str] = cfg_field(
        ["cot", "no_cot"], "Which models to train: cot (the RL starting point) and/or no_cot (the baseline).",
        choices=("cot", "no_cot"),
    )
    num_train_examples: int = cfg_field(
        100_000, "Generated training problems (none equal to a held-out or real-eval question).", min=1
    )
    num_eval_examples: int = cfg_field(500, "Held-out generated problems for the final evaluation.", min=0)
    num_eval_during_training: int = cfg_field(
        200, "The first this-many held-out problems are decoded every sft eval_steps for the curves.", min=0
    )
    real_eval: str | None = cfg_field(
        "auto",
        "Real evaluation file (iCoT text format). 'auto': for icot_mult with equal digit counts d, the file "
        "icot_mult_{d}x{d}/valid.txt, shipped in the package (d = 4, 5; `$LATENTRL_SHARED_DATA` or a "
        "shared/data folder beside the repository for others); "
        "null: none. `--real-eval PATH` on the command line sets it too.",
    )
    real_eval_max_examples: int | None = cfg_field(
        None, "Use only the first this-many problems of the real file; null = all of them.", min=1
    )
    real_eval_slice: int = cfg_field(
        50,
        "Also record Pass@1 on the first this-many real and held-out generated problems (what the shipped-checkpoint "
        "test re-checks); 0 skips it.",
        min=0,
    )
    extra_evals: dict[str, dict[str, Any]] = cfg_field(
        {},
        "More generated eval splits, by name: difficulty knobs overriding `difficulty` (e.g. {long: {length: 12}} "
        "for longer chains than trained on); each gives eval_<name> with num_eval_examples problems.",
    )
    num_threads: int | None = cfg_field(
        1,
        "torch.set_num_threads for the run; null leaves torch's default. 1 is fastest on a shared 2-core machine "
        "and keeps runs reproducible bit for bit.",
        min=1,
    )
    model: ModelShape = cfg_field(default_factory=ModelShape, help="Shape of the from-scratch Qwen2 (model.*).")
    cot: CoTSFTConfig = cfg_field(
        default_factory=lambda: CoTSFTConfig(mode="cot"),
        help="SFT options of the CoT model (cot.*); its mode is always 'cot' and output_dir is set by pretrain.",
    )
    no_cot: CoTSFTConfig = cfg_field(
        default_factory=lambda: CoTSFTConfig(mode="no_cot"),
        help="SFT options of the no-CoT model (no_cot.*); its mode is always 'no_cot' and output_dir is set by "
        "pretrain.",
    )

    def validate(self) -> None:
        from latentrl.data.tasks import TASKS

        if self.task not in TASKS:
            raise ConfigError(f"Invalid value for 'task': {self.task!r}; known tasks: {', '.join(sorted(TASKS))}")
        if not self.modes:
            raise ConfigError("modes must name at least one of cot, no_cot")
        if self.num_eval_during_training > self.num_eval_examples:
            raise ConfigError(
                f"num_eval_during_training ({self.num_eval_during_training}) must be <= num_eval_examples "
                f"({self.num_eval_examples})"
            )

    @property
    def run_name(self) -> str:
        return self.name or self.task

    def sft_config(self, mode: str) -> CoTSFTConfig:
        """The section of `mode` with its mode forced (YAML sections are built from the class defaults)."""
        section = self.cot if mode == "cot" else self.no_cot
        out_dir = str(Path(self.output_dir) / f"{self.run_name}-{MODE_SUFFIX[mode]}")
        return dataclasses.replace(section, mode=mode, output_dir=out_dir)


# ---------------------------------------------------------------------------------------------------------------
# Locating the real evaluation data
# ---------------------------------------------------------------------------------------------------------------


def default_real_eval_path(task: str, difficulty: dict[str, Any]) -> Path | None:
    """The real validation file matching a synthetic task, if the project has one and it can be found."""
    if task != "icot_mult":
        return None
    from latentrl.data.tasks import TASKS

    digits = difficulty.get("digits", TASKS[task].defaults["digits"])
    digits_b = difficulty.get("digits_b") or digits
    if digits != digits_b:
        return None
    from latentrl.data.paths import find_real_data_file

    return find_real_data_file(f"icot_mult_{digits}x{digits}/valid.txt")


def _resolve_real_eval(cfg: PretrainConfig) -> Path | None:
    if cfg.real_eval is None:
        return None
    if cfg.real_eval == "auto":
        return default_real_eval_path(cfg.task, cfg.difficulty)
    path = Path(cfg.real_eval).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"real_eval file not found: {path}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def build_base_model(cfg: PretrainConfig, seed: int | None = None):
    """Word tokenizer over the task vocabulary + Coconut latent tokens + a seeded random Qwen2 of `cfg.model`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from latentrl.data.tasks import task_vocabulary
    from latentrl.model import LatentModel
    from latentrl.tokenizer import build_word_tokenizer

    shape = cfg.model
    tok = build_word_tokenizer(task_vocabulary(cfg.task), model_max_length=shape.max_position_embeddings)
    qcfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tie_word_embeddings,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = AutoModelForCausalLM.from_config(qcfg)
    lm = LatentModel(model, tok)
    lm.add_latent_tokens(init_from="<<")
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    lm.eval()
    return lm


def _num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and plots
# ---------------------------------------------------------------------------------------------------------------


def _eval(model, examples, budget: int, batch_size: int) -> dict[str, Any]:
    from latentrl.eval import evaluate

    res = evaluate(model, list(examples), max_new_positions=budget, batch_size=batch_size, k=0)
    return {
        "pass_at_1": res.pass_at_1,
        "correct": round(res.pass_at_1 * res.n),
        "n": res.n,
        "mean_reasoning_positions": res.mean_reasoning_positions,
        "wall_s": round(res.wall_s, 2),
        "samples": res.samples,
    }


def _budget(model, examples, mode: str) -> int:
    from latentrl.sft.cot import encode_examples

    enc = encode_examples(model.tokenizer, examples, mode)
    return max((len(t) for _, t in enc), default=1) + 8


def plot_comparison(run_dirs: dict[str, Path], out_png: Path, title: str) -> Path:
    """Training loss and held-out greedy Pass@1 against step, CoT and no-CoT in the same axes."""
    from matplotlib.figure import Figure

    from latentrl.logger import read_metrics

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (mode, run_dir) in enumerate(run_dirs.items()):
        recs = read_metrics(run_dir)
        label = "CoT" if mode == "cot" else "no CoT"
        loss = [(r["step"], r["loss"]) for r in recs if isinstance(r.get("loss"), (int, float))]
        acc = [(r["step"], r["eval/pass_at_1"]) for r in recs if isinstance(r.get("eval/pass_at_1"), (int, float))]
        if loss:
            ax_loss.plot(*zip(*loss), color=f"C{i}", label=label)
        if acc:
            ax_acc.plot(*zip(*acc), color=f"C{i}", marker="o", markersize=3, label=label)
    ax_loss.set_title("training loss (target tokens)")
    ax_loss.set_yscale("log")
    ax_acc.set_title("greedy Pass@1, held-out generated problems")
    ax_acc.set_ylim(-0.02, 1.02)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


def _continue_finished(run_dir: Path, max_steps: int) -> bool:
    """Whether a model that finished (results.json written) is to train on to a larger `max_steps` on --resume: its
    results move to results_at_step_<N>.json and it resumes from its newest checkpoint. A ConfigError when it kept
    no checkpoint to continue from."""
    from latentrl.checkpoint import latest_checkpoint
    from latentrl.run_dir import model_checkpoint_problem

    done = int(json.loads((run_dir / RESULTS_FILE).read_text()).get("steps") or 0)
    if max_steps <= 0 or done >= max_steps:
        return False
    last = latest_checkpoint(run_dir, problem=model_checkpoint_problem)
    if last is None:
        raise ConfigError(f"{run_dir} finished at {done} steps and kept no checkpoint to continue from (save_steps was "
                          f"0): max_steps={max_steps} needs a new run (another output_dir)")
    if last.name != f"checkpoint-{done}":  # continuing from an earlier one would redo steps and replace the model
        raise ConfigError(f"{run_dir} finished at {done} steps but its newest checkpoint is {last.name} (save_steps "
                          f"does not divide {done}): max_steps={max_steps} needs a new run (another output_dir)")
    kept = run_dir / f"results_at_step_{done}.json"
    (run_dir / RESULTS_FILE).rename(kept)
    print(f"{run_dir} finished at {done} steps: continuing to {max_steps} (its results kept in {kept.name})",
          file=sys.stderr)
    return True


def pretrain(config: PretrainConfig, *, command: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate the base models of `config`; returns (and writes) the results dict.

    `resume` continues an interrupted run in `output_dir`: a model already finished (its results.json written) is
    kept as it is, one with a checkpoint (`cot.save_steps` / `no_cot.save_steps`) continues from its newest intact
    one exactly, and one not started yet starts."""
    from latentrl.checkpoint import atomic_write_json, latest_checkpoint, save_model_into
    from latentrl.data import load_icot, make_examples, train_eval_split
    from latentrl.data.provenance import TrainDraw
    from latentrl.logger import plot_metrics
    from latentrl.run_dir import check_new_run, model_checkpoint_problem, replace_run

    cfg = config
    t_start = time.perf_counter()
    if resume and cfg.overwrite_output_dir:
        raise ConfigError("--resume continues the run in output_dir; overwrite_output_dir=true would delete it first: "
                          "set only one of them")
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    model_dirs = [Path(cfg.sft_config(mode).output_dir) for mode in cfg.modes]
    finished = {d for d in model_dirs if resume and (d / RESULTS_FILE).is_file()}
    for mode, d in zip(cfg.modes, model_dirs, strict=True):  # a finished model asked for more steps continues
        if d in finished and _continue_finished(d, cfg.sft_config(mode).max_steps):
            finished.discard(d)
    resumable = {d for d in model_dirs
                 if resume and d not in finished and latest_checkpoint(d, problem=model_checkpoint_problem)}
    for folder in ([] if resume else [out]) + [d for d in model_dirs if d not in finished | resumable]:
        check_new_run(folder, overwrite=cfg.overwrite_output_dir, resumable=not resume)

    real_path = _resolve_real_eval(cfg)
    real = load_icot(real_path)[: cfg.real_eval_max_examples] if real_path is not None else []
    train, held_out = train_eval_split(
        cfg.task, cfg.num_train_examples, cfg.num_eval_examples, cfg.seed,
        exclude=[ex.question for ex in real], **cfg.difficulty,
    )
    during = held_out[: cfg.num_eval_during_training]
    extra = {
        name: make_examples(cfg.task, cfg.num_eval_examples, cfg.seed + 1, **{**cfg.difficulty, **knobs})
        for name, knobs in cfg.extra_evals.items()
    }

    results: dict[str, Any] = {
        "task": cfg.task,
        "difficulty": dict(cfg.difficulty),
        "name": cfg.run_name,
        "command": command,
        "real_eval_file": str(real_path) if real_path is not None else None,
        "num_train_examples": len(train),
        "models": {},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "num_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    if cfg.overwrite_output_dir:  # the earlier run goes whole, its model folders with it
        for folder in (*model_dirs, out):
            replace_run(folder)
    out.mkdir(parents=True, exist_ok=True)
    run_dirs: dict[str, Path] = {}
    for mode in ("cot", "no_cot"):
        if mode not in cfg.modes:
            continue
        sft_cfg = cfg.sft_config(mode)
        run_dir = Path(sft_cfg.output_dir)
        if run_dir in finished:  # trained and evaluated before the interruption
            kept = json.loads((run_dir / RESULTS_FILE).read_text())
            results["models"][mode] = {k: v for k, v in kept.items() if k not in ("task", "difficulty", "seed",
                                                                                  "real_eval_file")}
            run_dirs[mode] = run_dir
            continue
        if run_dir in resumable:
            sft_cfg = dataclasses.replace(sft_cfg, resume_from_checkpoint="latest")
        model = build_base_model(cfg)
        budget = sft_cfg.max_new_positions or _budget(model, list(train[:2000]) + list(held_out) + list(real), mode)
        budget_extra = {name: _budget(model, exs, mode) for name, exs in extra.items()}
        sft_cfg = dataclasses.replace(sft_cfg, max_new_positions=budget)
        history: SFTHistory = train_sft(sft_cfg, model, train, during)

        entry: dict[str, Any] = {
            "path": run_dir.name,
            "mode": mode,
            "steps": history.steps,
            "batch_size": sft_cfg.per_device_train_batch_size,
            "learning_rate": sft_cfg.learning_rate,
            "num_parameters": _num_params(model.model),
            "train_wall_s": round(history.train_wall_s, 1),
            "final_train_loss": history.train[-1]["loss"] if history.train else None,
            "final_token_accuracy": history.train[-1]["token_accuracy"] if history.train else None,
            "max_new_positions": budget,
        }
        bs = sft_cfg.eval_batch_size
        for split, exs in (("generated", held_out), ("real", real)):
            if not exs:
                continue
            entry[f"eval_{split}"] = _eval(model, exs, budget, bs)
            if cfg.real_eval_slice:
                sl = _eval(model, exs[: cfg.real_eval_slice], budget, bs)
                sl.pop("samples")
                entry[f"eval_{split}_slice"] = sl
        for name, exs in extra.items():
            entry[f"eval_{name}"] = {"difficulty": {**cfg.difficulty, **cfg.extra_evals[name]},
                                     **_eval(model, exs, budget_extra[name], bs)}
        entry["wall_s"] = round(history.wall_s, 1)

        save_model_into(run_dir, model.save_pretrained)
        args = {
            "pretrain_config": config_to_dict(cfg),
            "sft_config": config_to_dict(sft_cfg),
            "command": command,
        }
        atomic_write_json(run_dir / TRAINING_ARGS_FILE, args)
        draw = TrainDraw(cfg.task, cfg.num_train_examples, cfg.num_eval_examples, cfg.seed, dict(cfg.difficulty))
        atomic_write_json(run_dir / RESULTS_FILE, {"task": cfg.task, "difficulty": dict(cfg.difficulty), "seed": cfg.seed,
                                                  "real_eval_file": results["real_eval_file"], **entry,
                                                  "train_data": [draw.to_dict()]})
        keys = ["loss", "token_accuracy", "eval/pass_at_1", "eval/mean_reasoning_positions"]
        plot_metrics(run_dir / "metrics.jsonl", run_dir / CURVES_FILE, keys,
                     title=f"{cfg.run_name} {mode} SFT", smoothing=0.0, missing="skip")
        results["models"][mode] = entry
        run_dirs[mode] = run_dir
        del model

    models = results["models"]
    if "cot" in models and "no_cot" in models:
        for split in [k for k in models["cot"] if k.startswith("eval_") and not k.endswith("_slice")]:
            if split in models["no_cot"]:
                results[f"cot_minus_no_cot_{split}"] = (
                    models["cot"][split]["pass_at_1"] - models["no_cot"][split]["pass_at_1"]
                )
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / RESULTS_FILE, results)
    plot_comparison(run_dirs, out / CURVES_FILE, f"{cfg.run_name}: CoT vs no-CoT SFT from scratch")
    return results


def _version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:
        return None


def _summary(results: dict[str, Any]) -> str:
    lines = [f"{results['name']} ({results['task']} {results['difficulty']}), {results['wall_s']} s"]
    for mode, e in results["models"].items():
        parts = [f"{mode:>6}: {e['steps']} steps, train {e['train_wall_s']} s"]
        for split in [k for k in e if k.startswith("eval_") and not k.endswith("_slice")]:
            parts.append(f"{split.removeprefix('eval_')} Pass@1 {e[split]['pass_at_1']:.3f} "
                         f"(n={e[split]['n']}, {e[split]['mean_reasoning_positions']:.1f} reasoning positions)")
        lines.append(", ".join(parts))
    return "\n".join(lines)


def add_pretrain_args(parser: argparse.ArgumentParser) -> None:
    """The options of `latentrl pretrain` (shared by the CLI and `python -m latentrl.pretrain`)."""
    parser.add_argument("--config", help="YAML config file (configs/pretrain_*.yaml)")
    parser.add_argument("--real-eval", help="real evaluation file in iCoT text format (sets real_eval)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in output_dir (finished models kept, checkpoints resumed)")
    parser.add_argument("--help-config", action="store_true", help="list every option with its default and help")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, dotted for sections (cot.max_steps=600)")


def pretrain_command(ns: argparse.Namespace) -> int:
    """Run `latentrl pretrain` from parsed options; the command line is recorded in each model's results.json."""
    if ns.help_config:
        print(config_help(PretrainConfig))
        return 0
    overrides = list(ns.overrides)
    if ns.real_eval:
        overrides.append(f"real_eval={ns.real_eval}")
    cfg = load_config(PretrainConfig, ns.config, overrides)
    argv = (["--config", ns.config] if ns.config else []) + (["--real-eval", ns.real_eval] if ns.real_eval else [])
    results = pretrain(cfg, command="latentrl pretrain " + shlex.join(argv + list(ns.overrides)),
                       resume=getattr(ns, "resume", False))
    print(_summary(results))
    print(f"models, metrics and plots in {cfg.output_dir}")
    return 0


def pretrain_main(argv: Sequence[str] | None = None) -> int:
    """`latentrl pretrain --config FILE [--real-eval PATH] [key=value ...]`."""
    parser = argparse.ArgumentParser(
        prog="latentrl pretrain", description="Train a small base model from scratch, with and without CoT."
    )
    add_pretrain_args(parser)
    return pretrain_command(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":  # python -m latentrl.pretrain --config ...
    try:
        sys.exit(pretrain_main())
    except (ConfigError, FileNotFoundError, ValueError) as e:
        if os.environ.get("LATENTRL_DEBUG"):
            raise
        print(f"latentrl pretrain: error: {e}", file=sys.stderr)
        sys.exit(2)
