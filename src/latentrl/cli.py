"""`latentrl` command line: train, eval, inspect, demo, bench, pretrain.

Every sub-command prints a one-line, actionable message for user errors (bad config, missing file, bad data)
instead of a traceback; `LATENTRL_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentrl.config import (
    ConfigError,
    GRPOConfig,
    config_from_dict,
    config_help,
    dotted_get,
    load_config,
    override_key,
    upgrade_saved_config,
    validate_config,
)

if TYPE_CHECKING:
    from latentrl.config import C
    from latentrl.data.provenance import TrainDraw

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
    needs_latent_tokens = cfg.latent.operator == "hidden_state" or any("latent" in t for t in cfg.latent.after_latent_tokens)
    return load_model(cfg.model_name_or_path, add_latent_tokens=needs_latent_tokens, dtype=cfg.dtype)


def load_model(name_or_path: str, **kwargs: Any):
    """`LatentModel.from_pretrained` on a local folder, a shipped model name or a hub id, with a one-line error
    (`ConfigError`) instead of the hub client's traceback when none of them exists."""
    from latentrl.assets import available_models, resolve_model
    from latentrl.model import LatentModel

    try:
        return LatentModel.from_pretrained(resolve_model(name_or_path), **kwargs)
    except FileNotFoundError as e:  # a missing local path: its message already lists the shipped models
        raise ConfigError(f"model_name_or_path: {e}") from e
    except OSError as e:
        raise ConfigError(
            f"model_name_or_path={name_or_path!r} is not a local model folder, not a shipped model "
            f"({', '.join(available_models())}), and loading it from the hub failed: {str(e).splitlines()[0]}"
        ) from e


def data_options(cfg: GRPOConfig) -> dict[str, Any]:
    """`load_examples` options for `cfg.dataset` / `cfg.eval_dataset` (hub configuration, row format)."""
    options: dict[str, Any] = {"config_name": cfg.dataset_config}
    if cfg.dataset_format != "auto":
        options["row_format"] = cfg.dataset_format
    return options


def load_train_data(cfg: GRPOConfig):
    """The training rows: `Example`s, or TRL prompt rows kept as dicts (`load_rows`). A built-in task's draw skips
    the problems the starting model records having trained on (`exclude_init_train_data`)."""
    return load_train_data_and_record(cfg)[0]


def load_train_data_and_record(cfg: GRPOConfig) -> tuple[list, list[TrainDraw]]:
    """(training rows, the provenance record the run's checkpoints carry: the starting model's recorded draws and,
    for a built-in task, this run's prompt draw with the draws it skipped)."""
    from latentrl.data import load_rows
    from latentrl.data.provenance import TrainDraw
    from latentrl.data.tasks import TASKS

    options = data_options(cfg)
    init_draws = starting_model_draws(cfg)
    skipped = tuple(init_draws) if cfg.exclude_init_train_data and cfg.dataset in TASKS else ()
    seen = frozenset().union(*(d.questions() for d in skipped))
    if seen:
        options["exclude"] = seen
    if seen and launch_rank() == 0:  # said once, not by every process of a launch
        print(f"training prompts: leaving out the {len(seen):,} problems {cfg.model_name_or_path} was trained on "
              "(exclude_init_train_data=false keeps them)")
    rows = load_rows(cfg.dataset, split="train", n=cfg.num_train_examples, seed=cfg.seed, **options)
    if len(rows) < cfg.num_train_examples and launch_rank() == 0:  # a file or hub split shorter than asked for
        print(f"training prompts: {len(rows):,} rows of {cfg.dataset} (num_train_examples={cfg.num_train_examples:,}"
              "; the data has no more)", file=sys.stderr)
    own = [TrainDraw.of_train_split(cfg.dataset, cfg.num_train_examples, cfg.seed, excluded=skipped)] \
        if cfg.dataset in TASKS else []
    return rows, init_draws + own


def starting_model_draws(cfg: GRPOConfig) -> list[TrainDraw]:
    """The training draws the starting model records (`latentrl.data.provenance`); [] for a hub id or a model
    without a record. A malformed record is a ConfigError naming its file, raised before the model loads."""
    from latentrl.assets import resolve_model
    from latentrl.data.provenance import read_train_draws

    if not cfg.model_name_or_path:
        return []
    path = Path(resolve_model(cfg.model_name_or_path)).expanduser()
    if not path.is_dir():  # a hub id: no local record to read
        return []
    try:
        return read_train_draws(path)
    except ValueError as e:
        raise ConfigError(f"the starting model's training record: {e}") from e


def launch_rank() -> int:
    """This process's rank in a `torchrun` / `accelerate launch` group (0 alone): messages printed before the
    process group exists come from rank 0 only."""
    return int(os.environ.get("RANK", "0") or 0)


def saved_run_settings(path: str | os.PathLike) -> dict[str, Any]:
    """A run's `run_config.json` as config data (older runs' keys upgraded), for `config_from_dict`."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"cannot read the run's settings in {path} ({e}); restore the file, or move it away to "
                          "use the settings of the command line (--config FILE key=value ...)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a run's settings (a JSON object), it holds a "
                          f"{type(data).__name__}; restore the file")
    return upgrade_saved_config(data)


def with_recorded_thoughts(cfg: GRPOConfig, config_file: str | None, overrides: Sequence[str],
                           cli_overrides: Sequence[str]) -> GRPOConfig:
    """`cfg` again with the starting model's recorded thought count (`latent_init.json`) on the method's
    `thought_count_keys` that `cli_overrides` leaves unset: a shipped Coconut init runs with the thoughts it was
    trained for, not the preset's. Says so on stderr; `cfg` unchanged when nothing is recorded."""
    from latentrl.assets import recorded_num_thoughts
    from latentrl.methods import get_method

    method = get_method(cfg.method)
    n = recorded_num_thoughts(cfg.model_name_or_path) if method.thought_count_keys else None
    if n is None:
        return cfg
    given = [override_key(o) for o in cli_overrides]

    def unset(key: str) -> bool:  # neither the key nor a section above it on the command line
        return not any(key == g or key.startswith(g + ".") for g in given)

    extra = [f"{k}={n}" for k in method.thought_count_keys if unset(k)]
    extra += [f"{k}={n}" for k in method.thought_count_bounds
              if unset(k) and extra and (dotted_get(cfg, k) or n) < n]  # a cap below the count rises with it
    if not extra:
        return cfg
    if launch_rank() == 0:
        print(f"{cfg.model_name_or_path} was trained with {n} thoughts (its latent_init.json): {' '.join(extra)} "
              "(a key=value on the command line wins)", file=sys.stderr)
    return load_config(GRPOConfig, config_file, [*overrides, *extra])


def recorded_scoring_unless_named(model: str, config: str | None, method: str | None,
                                  cli_overrides: Sequence[str]) -> dict[str, str]:
    """The method (and preset) a latent init records for reading its latents (`latentrl.assets.recorded_scoring`)
    when the command line names no config: all of it when no method is named either, only its preset when the named
    method is the recorded one; {} otherwise. Without it eval and inspect would read a latent init as a plain token
    model, or with the paper's defaults instead of the settings it was trained for."""
    if config:
        return {}
    named = method or next((o.split("=", 1)[1].strip() for o in reversed(cli_overrides)
                            if override_key(o) == "method"), None)
    from latentrl.assets import recorded_scoring

    recorded = recorded_scoring(model)
    if named is None:
        return recorded
    return {"config": recorded["config"]} if recorded.get("method") == named and "config" in recorded else {}


#: settings the optimizer state restored from a checkpoint fixes (torch restores each parameter group's lr, betas,
#: eps and weight decay; the LR schedule scales those restored rates): a resume cannot change them
FIXED_ON_RESUME = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
                   "hrpo.gate_learning_rate", "hrpo.lambda_learning_rate", "dlr.assistant_learning_rate")
#: settings the adapter restored from a LoRA checkpoint was built with: another rank, scale, set of modules or
#: trainable rows would not load (a size mismatch) or would load and silently change the policy (alpha)
ADAPTER_FIXED_ON_RESUME = ("lora.enabled", "lora.r", "lora.alpha", "lora.target_modules", "lora.modules_to_save",
                           "lora.train_latent_tokens")


def resumed_run_config(cfg: C, cli_overrides: Sequence[str]) -> C:
    """On --resume the run's own settings (`run_config.json` in its output_dir) are the base, changed only by the
    command line's key=value overrides (e.g. a larger max_steps): the YAML names the folder, and a value it holds
    that the run overrode at its start does not come back. Refuses to change what the restored state fixes. For
    any trainer config that records its run (`GRPOConfig`, `CoconutConfig`)."""
    from pathlib import Path

    from latentrl.config import config_from_dict
    from latentrl.logger import RUN_CONFIG_FILE

    saved_file = Path(cfg.output_dir) / RUN_CONFIG_FILE if cfg.output_dir else None
    if saved_file is None or not saved_file.is_file():
        return cfg  # nothing recorded: the resume checks (check_run_folder) say what is missing
    data = {**saved_run_settings(saved_file), "output_dir": cfg.output_dir}
    cls = type(cfg)
    saved, resumed = config_from_dict(cls, data, []), config_from_dict(cls, data, cli_overrides)
    for keys, what in ((FIXED_ON_RESUME, "the optimizer state restored from the checkpoint fixes it"),
                       (ADAPTER_FIXED_ON_RESUME, "the LoRA adapter restored from the checkpoint was built with it")):
        fixed = [k for k in keys if hasattr(saved, k.split(".")[0])]  # method sections that are mounted
        changed = [f"{k} {dotted_get(saved, k)} -> {dotted_get(resumed, k)}" for k in fixed
                   if dotted_get(saved, k) != dotted_get(resumed, k)]
        if changed:
            raise ConfigError(f"--resume cannot change {', '.join(changed)}: {what}. Resume without it, or start a "
                              "new run from the checkpoint's weights (model_name_or_path=RUN/checkpoint-N, another "
                              "output_dir)")
    if launch_rank() == 0:
        print(f"--resume: the run's settings from {saved_file}" + (f", with {' '.join(cli_overrides)}"
                                                                   if cli_overrides else ""), file=sys.stderr)
    return resumed


def command_config(cls: type[C], ns: argparse.Namespace, default_output_dir: str | None = None) -> C:
    """The command's config from --config and key=value overrides; with --resume and no --config, the run's own
    `run_config.json` in `output_dir` is enough (`latentrl train --resume output_dir=RUN`): the YAML's required
    keys are already recorded there."""
    from latentrl.logger import RUN_CONFIG_FILE

    if ns.resume and not ns.config:
        out = next((o.split("=", 1)[1].strip() for o in reversed(ns.overrides) if override_key(o) == "output_dir"),
                   default_output_dir)
        saved = Path(out) / RUN_CONFIG_FILE if out else None
        if saved is not None and saved.is_file():
            return config_from_dict(cls, {**saved_run_settings(saved), "output_dir": out}, ns.overrides)
    return load_config(cls, ns.config, ns.overrides)


def eval_rows(source: str, n: int, cfg: GRPOConfig) -> list:
    """The evaluation rows of `source`: a benchmark suite task's held-out problems (the bench's, outside the shipped
    models' pretraining data; icot_mult_4x4: the real valid file), so that `latentrl train eval_dataset=chain_sum`
    and `latentrl eval --data chain_sum` score the same problems; else the source's evaluation split."""
    from latentrl.bench import suite_tasks
    from latentrl.data import load_rows

    suite = suite_tasks()
    if source in suite:
        return suite[source].eval_examples(n)
    return load_rows(source, split="eval", n=n, seed=cfg.seed, **data_options(cfg))[:n]


@command("train", "RL-train a model with a method preset: latentrl train --config FILE [key=value ...]")
def cmd_train(ns: argparse.Namespace) -> int:
    from latentrl.methods import get_method
    from latentrl.rewards import get_reward_funcs

    if ns.help_config:
        print(config_help(GRPOConfig))
        return 0
    cfg = command_config(GRPOConfig, ns)
    if ns.resume:
        cfg.resume_from_checkpoint = "latest"
    if cfg.resume_from_checkpoint:  # --resume or resume_from_checkpoint=...: the run's own settings
        resume = cfg.resume_from_checkpoint
        cfg = resumed_run_config(cfg, ns.overrides)
        cfg.resume_from_checkpoint = resume
    else:
        recorded = recorded_scoring_unless_named(cfg.model_name_or_path, ns.config, None, ns.overrides)
        if recorded.get("method", cfg.method) != cfg.method:  # the default method would read it as a token model
            raise ConfigError(f"model_name_or_path={cfg.model_name_or_path} is a latent init read by method "
                              f"{recorded['method']!r} (its latent_init.json's scored_with): name the method, e.g. "
                              f"method={recorded['method']} (or method={cfg.method} to train it as a token model)")
        cfg = with_recorded_thoughts(cfg, ns.config, ns.overrides, ns.overrides)
    from latentrl.run_dir import check_run_folder

    # everything a typo can break is checked before the model loads (which can take minutes): a clash with an
    # earlier run or a bad checkpoint, the method, the reward functions, the data
    check_run_folder(cfg)
    method = get_method(cfg.method)
    get_reward_funcs(cfg.reward_funcs)
    train, record = load_train_data_and_record(cfg)
    evals = None
    if cfg.eval_dataset:
        evals = eval_rows(cfg.eval_dataset, cfg.num_eval_examples, cfg)
    model = build_model_for(cfg)
    if model.is_peft:  # a LoRA checkpoint: its weights (base + adapter) are where this run starts
        model.merge_and_unload()
        if launch_rank() == 0:
            print(f"model_name_or_path={cfg.model_name_or_path} is a LoRA checkpoint: its adapter is merged into its "
                  "base, the run's starting weights (and its KL reference); lora.* set how this run trains",
                  file=sys.stderr)
    trainer = method.trainer_class(cfg, model, train, eval_dataset=evals)
    trainer.train_data = record  # written into every checkpoint, so RL continued from one stays off the same data
    trainer.train()
    if trainer.dp.is_main:
        print(f"done: {trainer.global_step} steps; checkpoints and logs in {cfg.output_dir}")
    from latentrl.rl.distributed import end_process_group

    end_process_group()
    return 0


@command("coconut-sft", "Coconut curriculum SFT: latentrl coconut-sft --config FILE [key=value ...]")
def cmd_coconut_sft(ns: argparse.Namespace) -> int:
    from latentrl.data import load_examples
    from latentrl.sft.coconut import CoconutConfig, train_coconut

    if ns.help_config:
        print(config_help(CoconutConfig))
        return 0
    cfg = command_config(CoconutConfig, ns, default_output_dir="runs/coconut")
    cfg.output_dir = cfg.output_dir or "runs/coconut"  # metrics and checkpoints beside the model
    if ns.resume:
        cfg.resume_from_checkpoint = "latest"
    if cfg.resume_from_checkpoint:  # --resume or resume_from_checkpoint=...: the run's own settings
        resume = cfg.resume_from_checkpoint
        cfg = resumed_run_config(cfg, ns.overrides)
        cfg.resume_from_checkpoint = resume
        validate_config(cfg)
    if not cfg.model_name_or_path or not cfg.dataset:
        raise ConfigError("coconut-sft needs model_name_or_path and dataset (in the YAML or as key=value)")
    from latentrl.run_dir import check_new_run, check_same_run, resume_checkpoint

    out = cfg.output_dir
    if cfg.resume_from_checkpoint:  # fail before loading anything when there is nothing intact to resume
        check_same_run(resume_checkpoint(out, cfg.resume_from_checkpoint), "coconut", cfg.model_name_or_path,
                       trainer=True)
    else:
        check_new_run(out, overwrite=cfg.overwrite_output_dir, resumable=bool(cfg.save_steps))  # the model goes there
    train = load_examples(cfg.dataset, split="train", n=cfg.num_train_examples, seed=cfg.seed)
    evals = (load_examples(cfg.eval_dataset, split="eval", n=cfg.num_eval_examples, seed=cfg.seed)
             if cfg.eval_dataset else [])
    model = load_model(cfg.model_name_or_path, add_latent_tokens=True)
    train_coconut(cfg, model, train, evals)
    from accelerate.state import PartialState

    from latentrl.checkpoint import save_model_into
    from latentrl.rl.distributed import end_process_group

    if PartialState().is_main_process:  # a launch of several processes saves once
        save_model_into(out, model.save_pretrained)  # beside its checkpoints; a crash leaves no half-saved model
        print(f"done: Coconut model in {out}")
    end_process_group()
    return 0


@command("eval", "Pass@1 / Pass@k / sampled Pass@1 / reasoning positions of a checkpoint: latentrl eval --model PATH --data SOURCE")
def cmd_eval(ns: argparse.Namespace) -> int:
    import json

    from latentrl.methods import get_method

    small_model_threads()
    fixed = [f"model_name_or_path={ns.model}", f"max_completion_length={ns.max_new}", "report_to=[none]",
             "output_dir=runs/eval"]
    overrides = [*fixed, *ns.overrides]
    if ns.method:
        overrides.append(f"method={ns.method}")
    # The checkpoint is scored the way it was trained: its run's settings (method, operator, temperature) come from
    # run_config.json beside it unless --config names another file.
    from latentrl.assets import resolve_model

    run_config = None if ns.config else run_config_near(resolve_model(ns.model))
    if run_config:
        data = {k: v for k, v in saved_run_settings(run_config).items() if k != "output_dir"}
        cfg = config_from_dict(GRPOConfig, data, overrides)
        settings = run_config
    else:
        recorded = recorded_scoring_unless_named(ns.model, ns.config, ns.method, ns.overrides)
        config_file = ns.config or recorded.get("config")
        if "method" in recorded:
            overrides = [*fixed, f"method={recorded['method']}", *ns.overrides]  # the command line's win
        cfg = with_recorded_thoughts(load_config(GRPOConfig, config_file, overrides), config_file, overrides,
                                     ns.overrides)
        if recorded:
            settings = ("its latent_init.json's scored_with (" + ", ".join(f"{k} {v}" for k, v in recorded.items())
                        + "; no run_config.json beside the checkpoint)")
        else:
            settings = ns.config or (f"the {cfg.method} defaults (no run_config.json beside the checkpoint)"
                                     if ns.method else "defaults (plain GRPO; no run_config.json beside the checkpoint)")
    data = eval_rows(ns.data, ns.num, cfg)
    temperature = cfg.temperature if ns.temperature is None else ns.temperature
    from latentrl.rewards import REWARD_FUNCS, answer_check

    check = next(name for name, f in REWARD_FUNCS.items() if f is answer_check(cfg.reward_funcs))
    print(f"latentrl eval: method {cfg.method}, settings from {settings}; {len(data)} problems of {ns.data} "
          f"(--num {ns.num}); " + (f"Pass@{ns.k} sampled at temperature {temperature:g}" if ns.k >= 1 else "no Pass@k (--k 0)")
          + f"; answers checked by {check} (from the run's reward_funcs; reward_funcs=[...] changes it)",
          file=sys.stderr)
    # The method's parts (side modules with their saved weights, thought operator, schedule, prompt format) are
    # built exactly as training built them; no trainer, optimizer or accelerator is needed to score.
    from latentrl.eval import evaluate

    model = build_model_for(cfg)
    get_method(cfg.method).check_scorable(model, ns.model)
    parts = get_method(cfg.method).build(model, cfg)
    res = evaluate(model, data, k=ns.k, temperature=temperature, **parts.eval_kwargs(cfg))
    out = {k: v for k, v in res.to_dict().items() if k != "samples"}
    if ns.thought_check:  # latent methods: Pass@1 with swapped / zeroed thoughts (latentrl.thought_dependence)
        from latentrl.thought_dependence import method_thought_dependence

        dep = method_thought_dependence(model, parts, cfg, data)
        if dep is not None:
            out["thought_dependence"] = dep.to_dict()
    print(json.dumps({"model": ns.model, "data": ns.data, "method": cfg.method, "settings": settings,
                      "answer_check": check, **out}))
    return 0


def at_least(lo: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `lo` (a bad value is argparse's one-line usage error, exit code 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    return parse


def temperature(text: str) -> float:
    """An argparse `type`: a finite number >= 0 (0: greedy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0: greedy), got {text}")
    return value


#: the file types matplotlib writes (`FigureCanvasBase.get_supported_filetypes()`), without importing it to parse
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".eps", ".ps", ".pgf")


def image_path(text: str) -> Path:
    """An argparse `type`: where a figure goes; no suffix gets ".png" (the path printed is the one written), a
    suffix matplotlib cannot write is refused before anything runs."""
    path = Path(text)
    if not path.suffix:
        return path.with_name(path.name + ".png")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image file name: end it in .png (or "
                                         f"{', '.join(IMAGE_SUFFIXES[1:])})")
    return path


def unit_fraction(text: str) -> float:
    """An argparse `type`: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (save_pretrained), shipped model name or hub id")
    p.add_argument("--data", required=True, help="suite task (icot_mult_4x4, chain_sum: the bench's held-out problems), "
                                                 "task name, data file (.txt iCoT lines, .json, .jsonl, ...) or hub id")
    p.add_argument("--config", default=None,
                   help="the run's YAML (method and latent settings); default: run_config.json beside the checkpoint, "
                        "else the method (and preset) a latent init records in its latent_init.json (scored_with), "
                        "else plain GRPO")
    p.add_argument("--method", default=None, help="registered method (overrides the config's)")
    p.add_argument("--num", type=at_least(1), default=200, help="evaluation problems: the first NUM of --data (default 200)")
    p.add_argument("--k", type=at_least(0), default=4, help="k of Pass@k (and of the sampled Pass@1); 0 skips sampling")
    p.add_argument("--temperature", type=temperature, default=None,
                   help="sampling temperature of Pass@k (default: the run's `temperature`, e.g. HRPO 0.5)")
    p.add_argument("--max-new", type=at_least(1), default=64,
                   help="max completion positions (a completion cut at this budget is warned about)")
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)  # ignored: evaluation builds no trainer (old scripts)
    p.add_argument("--no-thought-check", dest="thought_check", action="store_false",
                   help="skip the thought-dependence check (on by default for methods with latent positions: Pass@1 "
                        "with thoughts swapped between problems and zeroed)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")


def resolve_model_path(name: str) -> str:
    """A local checkpoint folder or a shipped model name (`latentrl.assets`) as a folder; a clear error otherwise."""
    from pathlib import Path

    from latentrl.assets import available_models, resolve_model

    path = resolve_model(name)
    if Path(path).exists():
        return path
    shipped = ", ".join(available_models()) or "none"
    raise FileNotFoundError(f"no checkpoint {name!r}: not an existing folder and not a shipped model "
                            f"(shipped: {shipped})")


def run_config_near(checkpoint: str) -> str | None:
    """The `run_config.json` that `latentrl train` wrote for this checkpoint (in it or in its run folder)."""
    from pathlib import Path

    from latentrl.logger import RUN_CONFIG_FILE

    p = Path(checkpoint)
    for folder in (p, p.parent):
        if (folder / RUN_CONFIG_FILE).is_file():
            return str(folder / RUN_CONFIG_FILE)
    return None


@command("inspect", "nearest tokens, norm and mixing weights of every latent thought: latentrl inspect --model PATH "
                    "--method M --prompts TEXT ...")
def cmd_inspect(ns: argparse.Namespace) -> int:
    import re

    from latentrl.config import config_from_dict
    from latentrl.data import load_examples
    from latentrl.methods import get_method
    from latentrl.thought_inspection import inspect_thoughts, plot_heatmap, render_table

    small_model_threads()
    path = resolve_model_path(ns.model)
    run_config = None if ns.config else run_config_near(path)
    recorded = {} if run_config else recorded_scoring_unless_named(path, ns.config, ns.method, ns.overrides)
    # a latent init names the method that reads its latents; the command line's key=values come after it and win
    named = [f"method={recorded['method']}"] if "method" in recorded else []
    overrides = [f"model_name_or_path={path}", "report_to=[none]", *named, *ns.overrides]
    if ns.method:
        overrides.append(f"method={ns.method}")
    if ns.max_new:
        overrides.append(f"max_completion_length={ns.max_new}")
    if not ns.method and not ns.config and not run_config and "method" not in recorded:
        raise ConfigError("latentrl inspect needs the method that produced the checkpoint: --method NAME (or "
                          "--config RUN.yaml)")
    misplaced = [p for p in ns.prompts or [] if re.match(r"^[A-Za-z_][\w.-]*=", p)]
    if misplaced:
        raise ConfigError(f"{misplaced[0]!r} looks like a key=value override: put overrides before --prompts")
    if run_config:
        data = {k: v for k, v in saved_run_settings(run_config).items() if k != "output_dir"}
        cfg = config_from_dict(GRPOConfig, data, overrides)
        print(f"settings of the run: {run_config}")
    else:
        config_file = ns.config or recorded.get("config")
        cfg = with_recorded_thoughts(load_config(GRPOConfig, config_file, overrides), config_file, overrides,
                                     ns.overrides)
    if ns.prompts:
        prompts = list(ns.prompts)
    elif ns.dataset:
        prompts = load_examples(ns.dataset, split="eval", n=ns.num, seed=cfg.seed, **data_options(cfg))[: ns.num]
    else:
        raise ConfigError("latentrl inspect needs prompts: --prompts TEXT [TEXT ...] or --dataset SOURCE --num N")
    get_method(cfg.method)  # an unknown method fails before the model loads
    res = inspect_thoughts(build_model_for(cfg), cfg.method, prompts, config=cfg, top_k=ns.top_k,
                           temperature=ns.temperature, seed=ns.seed)
    render_table(res)
    if ns.out:
        if any(r.thoughts for r in res.rows):
            print(f"heatmap: {plot_heatmap(res, ns.out, max_positions=ns.max_positions)}")
        else:
            print("no latent positions in any completion: no heatmap written")
    return 0


def _add_inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (e.g. RUN/checkpoint-40) or shipped model name")
    p.add_argument("--method", default=None,
                   help="registered latent method whose thoughts to form (default: the run's, from run_config.json)")
    p.add_argument("--config", default=None,
                   help="the run's YAML (latent settings); default: run_config.json beside the checkpoint if any")
    p.add_argument("--prompts", nargs="+", default=None,
                   help="prompt texts as the dataset writes them (key=value overrides go before --prompts)")
    p.add_argument("--dataset", "--data", dest="dataset", default=None,
                   help="take prompts from this task name / data file instead (its eval split)")
    p.add_argument("--num", type=at_least(1), default=3, help="prompts taken from --dataset (default 3)")
    p.add_argument("--top-k", type=at_least(1), default=5, help="tokens shown per position and view (default 5)")
    p.add_argument("--out", type=image_path, default=None, help="write the heatmap image here (.png)")
    p.add_argument("--max-positions", type=at_least(1), default=None, help="plot only the first N latent positions")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (with --temperature > 0)")
    p.add_argument("--temperature", type=temperature, default=0.0,
                   help="0 (default): greedy, operator noise off; > 0: sample with noise on")
    p.add_argument("--max-new", type=at_least(1), default=None, help="max completion positions (default: the config's)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. latent.num_latent_steps=8)")


@command("demo", "the embedded default (about two minutes on CPU): CoT vs latent reasoning on chain_sum and iCoT 4x4, "
                 "then RL on the shipped iCoT model; tables and curves. --latent [--task T]: one latent part alone; "
                 "--method NAME: the RL part alone, with NAME")
def cmd_demo(ns: argparse.Namespace) -> int:
    from latentrl.demo import run_demo

    small_model_threads()

    if ns.task is not None and not ns.latent:
        raise ConfigError("--task chooses the task of the latent part: use it with --latent (the RL part runs on the "
                          "real iCoT 4x4 file)")
    if not ns.latent and ns.method is None and ns.model is None:
        from latentrl.demo import run_full_demo

        run_full_demo(steps=ns.steps if ns.steps is not None else 40, num_eval=ns.num_eval, out_dir=ns.out,
                      seed=ns.seed, overrides=ns.overrides)
        return 0
    if ns.latent:
        from latentrl.demo import LATENT_DEMO_METHOD, LATENT_DEMO_TASKS, run_latent_demo

        if ns.method not in (None, LATENT_DEMO_METHOD):
            raise ConfigError(f"--latent runs {LATENT_DEMO_METHOD} from the shipped latent init; --method "
                              f"{ns.method} is for the default demo")
        run_latent_demo(steps=ns.steps if ns.steps is not None else 40,
                        num_eval=ns.num_eval if ns.num_eval is not None else 500, out_dir=ns.out, seed=ns.seed,
                        overrides=ns.overrides, model=ns.model, task_name=ns.task or LATENT_DEMO_TASKS[0])
        return 0
    run_demo(method=ns.method or "grpo", steps=ns.steps if ns.steps is not None else 40,
             num_eval=ns.num_eval if ns.num_eval is not None else 200, out_dir=ns.out, seed=ns.seed,
             overrides=ns.overrides, model=ns.model)
    return 0


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latent", action="store_true",
                   help="only the latent-reasoning part on one task (--task): on its held-out problems, the shipped "
                        "CoT model, the shipped latent init (chain_sum-coconut, icot_mult_4x4-coconut) and "
                        "coconut_grpo after --steps RL steps from it (Pass@1 ± SE, reasoning positions, thought-swap "
                        "drop; under a minute on one CPU thread)")
    from latentrl.demo import LATENT_DEMO_TASKS

    p.add_argument("--task", default=None, choices=LATENT_DEMO_TASKS,
                   help="with --latent: the suite task (default chain_sum; icot_mult_4x4: the real valid file)")
    p.add_argument("--method", default=None,
                   help="only the RL part, with this registered method, on the shipped iCoT 4x4 model")
    p.add_argument("--steps", type=at_least(1), default=None, help="RL optimizer steps (default: 40)")
    p.add_argument("--num-eval", type=at_least(1), default=None,
                   help="evaluation problems: the first N of the real iCoT 4x4 file (default 200) and the first N "
                        "problems of each latent part (default 500)")
    p.add_argument("--out", default=None, help="run folder (default: runs/demo-<time>, runs/demo-<method>-<time>, "
                                               "runs/demo-latent-<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="run the RL part alone from this checkpoint instead of the shipped "
                                                 "CoT model (with --latent: instead of the shipped latent init)")
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


@command("plot", "Plot a run's logged metrics against step: latentrl plot RUN_DIR --keys reward embeds_ratio --out x.png")
def cmd_plot(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from latentrl.logger import plot_metrics, plot_panels, read_metrics

    run = Path(ns.run)
    metrics = run / "metrics.jsonl" if run.is_dir() else run
    if not run.exists():
        raise FileNotFoundError(f"{ns.run} does not exist (relative to {Path.cwd()}): name a run folder (its "
                                "output_dir) or its metrics.jsonl")
    if not metrics.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {ns.run} (runs log it with report_to: [jsonl])")
    out = Path(ns.out) if ns.out else metrics.parent / "metrics.png"
    # keys asked for must exist (nothing is written otherwise); of the default keys, the ones not logged are skipped
    missing = "error" if ns.keys else "skip"
    panels, absent = plot_panels(read_metrics(metrics), ns.keys or DEFAULT_PLOT_KEYS, missing=missing)
    path = plot_metrics(metrics, out, panels, title=ns.title, smoothing=ns.smoothing)
    print(f"{path}  (panels: {', '.join(panels)}" + (f"; not logged: {', '.join(absent)}" if absent else "") + ")")
    return 0


DEFAULT_PLOT_KEYS = ["reward", "eval/pass_at_1", "completions/mean_length", "kl"]


def _add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (output_dir) or its metrics.jsonl")
    p.add_argument("--keys", nargs="+", default=None,
                   help="metric names, globs allowed ('clip_ratio/*'); one panel each; a name never logged is an "
                        f"error (default: those of {', '.join(DEFAULT_PLOT_KEYS)} that were logged)")
    p.add_argument("--out", type=image_path, default=None, help="PNG path (default: RUN/metrics.png)")
    p.add_argument("--title", default=None)
    p.add_argument("--smoothing", type=unit_fraction, default=None, help="EMA factor in [0, 1) (default: 0.6 above 30 points)")


@command("pretrain", "Train a small base model from scratch, with and without CoT: latentrl pretrain --config FILE")
def cmd_pretrain(ns: argparse.Namespace) -> int:
    from latentrl.pretrain import pretrain_command

    return pretrain_command(ns)


def _add_pretrain_args(p: argparse.ArgumentParser) -> None:
    from latentrl.pretrain import add_pretrain_args

    add_pretrain_args(p)


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for results.json, results.md and plots")
    p.add_argument("--quick", action="store_true", help="short runs and 100 eval problems (< 15 min on 2 cores)")
    p.add_argument("--methods", default=None, help="comma-separated subset of registered methods")
    p.add_argument("--tasks", default=None, help="comma-separated subset of suite tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=at_least(1), default=4, help="k of Pass@k")
    p.add_argument("--num-eval", type=at_least(1), default=None, help="evaluation problems (default 100 quick / 1000 full)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.add_argument("--help-config", action="store_true", help="list every config field with its default and help")
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested fields (latent.top_k=5)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        ARG_BUILDERS.get(name, _add_train_args)(p)
    ns = parser.parse_args(argv)
    from latentrl.cpu_allocator import tune_glibc_malloc
    from latentrl.logger import batch_console

    tune_glibc_malloc()  # large CPU temporaries from the heap, not a fresh mmap each step (latentrl.cpu_allocator)

    if batch_console():  # no TTY (nohup, CI, a cluster log): no per-file weight-loading bars, our log lines only
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return COMMANDS[ns.command][0](ns)
    except KeyboardInterrupt:
        resumable = ns.command in ("train", "pretrain", "coconut-sft")
        if launch_rank() != 0:  # every process of a launch gets the interrupt: one says so
            return 130
        print(f"\nlatentrl {ns.command}: interrupted" + ("; the checkpoints it wrote are kept: the same command "
                                                      "with --resume continues from the last" if resumable else ""), file=sys.stderr)
        return 130
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        if os.environ.get("LATENTRL_DEBUG"):
            raise
        where = f": {e.filename}" if e.filename else ""
        hint = " (a file where a folder must go?)" if isinstance(e, (FileExistsError, NotADirectoryError)) else ""
        print(f"latentrl {ns.command}: error: {e.strerror or e}{where}{hint}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        if os.environ.get("LATENTRL_DEBUG") or not _raised_by_latentrl(e):
            raise  # an error from inside torch / transformers is a bug to report with its traceback, not bad input
        print(f"latentrl {ns.command}: error: {e}", file=sys.stderr)
        if not isinstance(e, (ConfigError, FileNotFoundError)):  # may be a bug rather than bad input: say how to see
            print(f"(traceback: LATENTRL_DEBUG=1 latentrl {ns.command} ...)", file=sys.stderr)
        return 2


def _raised_by_latentrl(e: BaseException) -> bool:
    """Whether `e` was raised by latentrl's own code (a message written for the user: bad options, data, files),
    or is a file the user named that is missing; an error raised inside a library is shown with its traceback."""
    if isinstance(e, (ConfigError, FileNotFoundError)):
        return True
    frames = traceback.extract_tb(e.__traceback__)
    package = str(Path(__file__).resolve().parent)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(package)


ARG_BUILDERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "train": _add_train_args, "eval": _add_eval_args, "demo": _add_demo_args, "bench": _add_bench_args,
    "pretrain": _add_pretrain_args, "inspect": _add_inspect_args, "plot": _add_plot_args,
}

if __name__ == "__main__":
    sys.exit(main())
