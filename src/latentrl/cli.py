"""`latentrl` command line: train, eval, demo, bench, pretrain.

Every sub-command prints a one-line, actionable message for user errors (bad config, missing file, bad data)
instead of a traceback; `LATENTRL_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from latentrl.config import ConfigError, GRPOConfig, config_help, load_config

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    def deco(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return deco


def small_model_threads() -> None:
    """One intra-op thread for the shipped tiny models unless the user chose (OMP_NUM_THREADS / LATENTRL_THREADS).

    Measured on 2 cores: a 128-wide model gains nothing from a second thread, and when anything else runs on the
    machine two threads contend and a demo step takes ~30x longer (17.8 s vs 0.6 s)."""
    import torch

    n = os.environ.get("LATENTRL_THREADS") or os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(n) if n else 1)


def build_model_for(cfg: GRPOConfig):
    from latentrl.model import LatentModel

    needs_latent_tokens = cfg.latent.operator == "hidden_state" or any("latent" in t for t in cfg.latent.after_latent_tokens)
    return LatentModel.from_pretrained(cfg.model_name_or_path, add_latent_tokens=needs_latent_tokens, dtype=cfg.dtype)


def load_train_data(cfg: GRPOConfig):
    from latentrl.data import load_examples

    return load_examples(cfg.dataset, split="train", n=cfg.num_train_examples, seed=cfg.seed)


@command("train", "RL-train a model with a method preset: latentrl train --config FILE [key=value ...]")
def cmd_train(ns: argparse.Namespace) -> int:
    from latentrl.methods import get_method

    if ns.help_config:
        print(config_help(GRPOConfig))
        return 0
    cfg = load_config(GRPOConfig, ns.config, ns.overrides)
    if ns.resume:
        cfg.resume_from_checkpoint = "latest"
    model = build_model_for(cfg)
    evals = None
    if cfg.eval_dataset:
        from latentrl.data import load_examples

        evals = load_examples(cfg.eval_dataset, split="eval", n=cfg.num_eval_examples, seed=cfg.seed)
    trainer = get_method(cfg.method).trainer_class(cfg, model, load_train_data(cfg), eval_dataset=evals)
    trainer.train()
    if trainer.dp.is_main:
        print(f"done: {trainer.global_step} steps; checkpoints and logs in {cfg.output_dir}")
    return 0


@command("coconut-sft", "Coconut curriculum SFT: latentrl coconut-sft --config FILE [key=value ...]")
def cmd_coconut_sft(ns: argparse.Namespace) -> int:
    from latentrl.data import load_examples
    from latentrl.model import LatentModel
    from latentrl.sft.coconut import CoconutConfig, train_coconut

    if ns.help_config:
        print(config_help(CoconutConfig))
        return 0
    cfg = load_config(CoconutConfig, ns.config, ns.overrides)
    if not cfg.model_name_or_path or not cfg.dataset:
        raise ConfigError("coconut-sft needs model_name_or_path and dataset (in the YAML or as key=value)")
    model = LatentModel.from_pretrained(cfg.model_name_or_path, add_latent_tokens=True)
    train = load_examples(cfg.dataset, split="train", n=cfg.num_train_examples, seed=cfg.seed)
    evals = (load_examples(cfg.eval_dataset, split="eval", n=cfg.num_eval_examples, seed=cfg.seed)
             if cfg.eval_dataset else [])
    train_coconut(cfg, model, train, evals)
    out = cfg.output_dir or "runs/coconut"
    model.save_pretrained(out)
    print(f"done: Coconut model in {out}")
    return 0


@command("eval", "Pass@1 / Pass@k / reasoning positions of a checkpoint: latentrl eval --model PATH --data SOURCE")
def cmd_eval(ns: argparse.Namespace) -> int:
    import json

    from latentrl.data import load_examples
    from latentrl.methods import get_method

    small_model_threads()
    overrides = [f"model_name_or_path={ns.model}", f"max_completion_length={ns.max_new}", "report_to=[none]",
                 f"output_dir={ns.out or 'runs/eval'}", *ns.overrides]
    if ns.method:
        overrides.append(f"method={ns.method}")
    cfg = load_config(GRPOConfig, ns.config, overrides)
    data = load_examples(ns.data, split="eval", n=ns.num, seed=cfg.seed)[: ns.num]
    # Building the method's trainer (no training happens) attaches its side modules and builds its thought operator
    # and schedule exactly as training did, so a checkpoint is scored the way it was trained.
    trainer = get_method(cfg.method).trainer_class(cfg, build_model_for(cfg), data, eval_dataset=data)
    res = trainer.evaluate(k=ns.k)
    out = {k: v for k, v in res.to_dict().items() if k != "samples"}
    print(json.dumps({"model": ns.model, "data": ns.data, "method": cfg.method, **out}))
    return 0


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (save_pretrained) or hub id")
    p.add_argument("--data", required=True, help="task name, data file (.txt iCoT lines, .json, .jsonl, ...) or hub id")
    p.add_argument("--config", default=None, help="the run's YAML (method and latent settings); default: plain GRPO")
    p.add_argument("--method", default=None, help="registered method (overrides the config's)")
    p.add_argument("--num", type=int, default=200, help="evaluation problems (default 200)")
    p.add_argument("--k", type=int, default=4, help="k of Pass@k; 0 skips sampling")
    p.add_argument("--max-new", type=int, default=64, help="max completion positions")
    p.add_argument("--out", default=None, help="scratch folder for the method's trainer (default runs/eval)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")


@command("demo", "the embedded default: RL on the shipped small model, before/after table, curves (minutes, CPU)")
def cmd_demo(ns: argparse.Namespace) -> int:
    from latentrl.demo import run_demo

    small_model_threads()

    run_demo(method=ns.method, steps=ns.steps, num_eval=ns.num_eval, out_dir=ns.out, seed=ns.seed,
             overrides=ns.overrides, model=ns.model)
    return 0


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="grpo", help="registered method to run (default: grpo)")
    p.add_argument("--steps", type=int, default=40, help="RL optimizer steps (default: 40)")
    p.add_argument("--num-eval", type=int, default=200, help="evaluation problems from the real iCoT 4x4 file")
    p.add_argument("--out", default=None, help="run folder (default: runs/demo-<method>-<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="start from this checkpoint instead of the shipped CoT model")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")


@command("bench", "every registered method on the CPU suite, same budget and seed: results.json/.md + plot")
def cmd_bench(ns: argparse.Namespace) -> int:
    from pathlib import Path

    small_model_threads()

    from latentrl.bench import run_bench

    rows = run_bench(Path(ns.out), quick=ns.quick, methods=ns.methods.split(",") if ns.methods else None,
                     tasks=ns.tasks.split(",") if ns.tasks else None, seed=ns.seed, k=ns.k, num_eval=ns.num_eval)
    print((Path(ns.out) / "results.md").read_text())
    print(f"{len(rows)} rows written to {ns.out}/results.json")
    return 0


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for results.json, results.md and plots")
    p.add_argument("--quick", action="store_true", help="short runs and 100 eval problems (< 15 min on 2 cores)")
    p.add_argument("--methods", default=None, help="comma-separated subset of registered methods")
    p.add_argument("--tasks", default=None, help="comma-separated subset of suite tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=4, help="k of Pass@k")
    p.add_argument("--num-eval", type=int, default=None, help="evaluation problems (default 100 quick / 1000 full)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.add_argument("--help-config", action="store_true", help="list every config field with its default and help")
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested fields (latent.top_k=5)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        ARG_BUILDERS.get(name, _add_train_args)(p)
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command][0](ns)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        if os.environ.get("LATENTRL_DEBUG"):
            raise
        print(f"latentrl {ns.command}: error: {e}", file=sys.stderr)
        return 2


ARG_BUILDERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "train": _add_train_args, "eval": _add_eval_args, "demo": _add_demo_args, "bench": _add_bench_args,
}

if __name__ == "__main__":
    sys.exit(main())
