"""Train a shipped latent init: the gated Coconut curriculum from a converged CoT model, to the all-latent stage.

    PYTHONPATH=src python scripts/train_latent_init.py chain_sum [--out DIR] [--threads 2] [key=value ...]

Recipes (`RECIPES`) name the CoT checkpoint, the curriculum options and the data. Data: Coconut training problems
are `load_examples(task, "train", n, seed=0)`; the curriculum gate reads the first `gate_num_examples` of the task's
seed-0 "eval" split (disjoint from those training problems); the final numbers are on the suite's held-out
evaluation set (`latentrl.bench.suite_tasks()[task].eval_examples`: a real file, or generated problems outside
every training split), checked disjoint from both. Writes into --out: the model (save_pretrained),
`metrics.jsonl` (training, gate/* and stage/* records), `result.json` (final Pass@1 with its standard error,
reasoning positions, the thought-dependence check) and `curve.png`. A recipe's `phases` run after the curriculum, each
in `--out`/NAME from a fresh AdamW at the final stage with some settings changed (the icot recipe's `probe_s5`: the
thought probe moved, ended by the gate). `--finish-steps N` (a recipe's `finish`, e.g. chain_sum's 500) ends the run
with N more steps of the final stage at a lower rate (`--finish-lr`; their metrics in `--out`/finish): every shipped
init was left short by its constant rate (docs/methods/coconut.md). A time box (`timeout 30m python ...`, `kill PID`
or Ctrl-C) stops training, saves the model as it is and scores it at its stage; `resume_from_checkpoint=latest`
continues the same --out folder from its last checkpoint (after the curriculum or a phase has ended, from its saved
end, in --out/curriculum or --out/NAME/end, into the next phase's last checkpoint), so a recipe longer than one
sitting is still one command, run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path

import torch

from latentrl.assets import available_models, model_path
from latentrl.bench import check_disjoint, suite_tasks
from latentrl.checkpoint import list_checkpoints
from latentrl.config import ConfigError, config_to_dict, load_config
from latentrl.data import cut_steps, load_examples
from latentrl.data.provenance import TrainDraw, read_train_draws
from latentrl.eval import binomial_se
from latentrl.model import LatentModel
from latentrl.sft.coconut import (
    CoconutConfig,
    coconut_evaluate,
    coconut_operator,
    coconut_prompt_text,
    coconut_schedule,
    train_coconut,
)

REPO = Path(__file__).resolve().parents[1]

RECIPES: dict[str, dict] = {
    # 7 steps `<< x + y = z >>`, one thought each (c = 1): stage k replaces steps 1..k; stage 7 = every step latent
    "chain_sum": {
        "cot_model": "chain_sum-cot-converged",
        "num_eval": 500,
        "overrides": [
            "c_thought=1", "max_latent_stage=7", "start_stage=1", "stage_advance=converged", "final_stage=7",
            "gate_metric=next_step_accuracy", "gate_threshold=0.9", "gate_patience=2", "gate_eval_steps=16",
            "gate_num_examples=256", "max_steps_per_stage=400", "num_train_examples=20000",
            "per_device_train_batch_size=32", "learning_rate=1e-3", "reset_optimizer=stage", "max_grad_norm=1.0",
            "probe_tokens=[-2]",
            "eval_strategy=no", "eval_batch_size=256", "logging_steps=16", "max_length=256", "seed=0",
        ],
        # then 500 more final-stage steps at a third of the rate: 93.0 -> 100 % (docs/bench/chain_sum/latent_init)
        "finish": {"steps": 500, "learning_rate": 3e-4},
    },
    # 4 steps (one partial product + running sum each), c = 3 thoughts per step: 12 thoughts + <|end-latent|> =
    # 13 reasoning positions against CoT's ~46; evaluated on the real iCoT 4x4 validation file (1,000 problems)
    "icot_mult_4x4": {
        "cot_model": "icot_mult_4x4-cot-converged",
        "num_eval": 1000,
        "overrides": [
            "c_thought=3", "max_latent_stage=4", "start_stage=1", "stage_advance=converged", "final_stage=4",
            "gate_metric=next_step_accuracy", "gate_threshold=0.8", "gate_patience=2", "gate_eval_steps=16",
            "gate_num_examples=256", "max_steps_per_stage=200", "num_train_examples=20000",
            "per_device_train_batch_size=32", "learning_rate=1e-3", "reset_optimizer=stage", "max_grad_norm=1.0",
            "eval_strategy=no", "eval_batch_size=250", "logging_steps=16", "max_length=256", "seed=0",
        ],
    },
    # the same problems with a chain of independent steps: the 4 partial products alone (no running sums; CoT
    # `chain=partials`, ~29 chain positions), c = 3 thoughts per partial product: 12 thoughts + <|end-latent|> = 13
    # reasoning positions. No step needs an earlier one, so the gate covers the rest of the chain *and* the answer
    # (gate_next_steps=4): the answer is where the thoughts must be read (the running sum is added up there).
    # Measured (docs/bench/icot_latent_init, runs Z1, ZZ): stage 1 converges after ~7,300 steps, stages 2-4 climb at
    # the same pace and had not converged at 5,000; the cap leaves room for ~7,000 each (about 3 h on one CPU core,
    # not yet run end to end; a GPU job). A million training problems, not 20,000: at 8,000 steps a stage 20,000
    # are seen ~13 times a stage, and a long stage 4 fitted them instead of the rule (runs ZT, ZU: gate loss rising
    # while the training loss fell; with a million, the two agree). Loading them takes ~5 min on one core and the
    # run then holds ~6 GB of memory (run ZW: 5.8 GB resident).
    "icot_mult_4x4_partials": {
        "task": "icot_mult_4x4",
        "dataset_kwargs": {"chain": "partials"},
        # not shipped (no benchmark row uses it): trained by `cot_command` (~40 min on one core)
        "cot_model": "runs/pretrain_icot_mult_4x4_partials_4L/icot_mult_4x4_partials_4L-cot",
        "cot_command": "latentrl pretrain --config configs/pretrain_icot_mult_4x4_partials_4L.yaml",
        "num_eval": 1000,
        "overrides": [
            "c_thought=3", "max_latent_stage=4", "start_stage=1", "stage_advance=converged", "final_stage=4",
            "gate_metric=next_step_accuracy", "gate_next_steps=4", "gate_threshold=0.8", "gate_patience=2",
            "gate_eval_steps=64", "gate_num_examples=256", "max_steps_per_stage=8000", "num_train_examples=1000000",
            "per_device_train_batch_size=32", "learning_rate=1e-3", "reset_optimizer=stage", "max_grad_norm=1.0",
            "probe_head_tokens=[[-5,-4],[-3,-2],[-1]]",
            "eval_strategy=no", "eval_batch_size=250", "logging_steps=16", "max_length=256", "seed=0",
        ],
    },
    # the route of `icot_mult_4x4-coconut` (shipped), from the start: the column-sums chain written
    # tens digit first (`chain=columns_tens_first`: the 4 partial products, then the 8 column sums, each sum's tens
    # digit before its units digit), stages 1-4 the partial products as 3 thoughts each, stage 5 the column sums as
    # 2 thoughts: 14 thoughts + <|end-latent|> = 15 reasoning positions (CoT 46). The linear thought probe reads each
    # product's digits from its thoughts and, at stage 5, S_3's tens digit from the first sums thought and its units
    # from the second (`probe_head_step_shift`; the layout that freed answer digit 3 in run TR). The model shipped
    # until 2026-12-07 came from a lineage of eleven runs (docs/bench/icot_latent_init, "Runs TP, TQ, TR"); this
    # recipe starts each stage from the previous one instead. `--cot-model docs/bench/icot_latent_init/base_ctf4L`
    # is a copy of the model `cot_command` trains (98.7 % on the real valid file). First run
    # (docs/bench/icot_latent_init, "Run CF"): 66.6 / 67.4 / 64.8 / 59.9 / 7.9 % at 45 / 41 / 36 / 30 / 15 positions
    # after stages 1-5 (swap drop = Pass@1; stages 2-5 end at the cap, stage 5 with answer digit 5 at chance), 3 h of
    # training on 2 CPU cores. Stage 5
    # again from that model with "probe_head_step_shift=[-1,0,0,0,8]" (the probe on S_5): 77.2 %, then 81.9 % and
    # 89.5 % after 4,000 and 8,000 more steps (runs CF5-CF7; CF8's 4,000 more: 84.3 %), swap drop = Pass@1; 4,000
    # more from CF7 at learning_rate=1e-4 (run CF9): 99.4 %, the model shipped as `icot_mult_4x4-coconut` since
    # 2026-12-07 (the route's commands: docs/bench/icot_latent_init, "Run CF" to "Run CF9"). 4,000 steps at 1e-4
    # straight from CF5's model (run CF5F) give 98.5 %: CF6-CF8 are not needed. So the recipe is that measured route,
    # CF -> CF5 -> CF5F, in one command: the curriculum as CF ran it (stage 5's 12,000 steps with the probe on S_3),
    # then CF5 as the phase `probe_s5` (a fresh AdamW and probe heads, the probe on S_5, up to 40,000 steps, ended by
    # the gate: CF5's passed at 10,688), then CF5F's finish. A variant with the probe on S_5 from the start of stage 5
    # (one run, 2026-12-07) still sat at gate ~0.08 after 23,000 stage-5 steps, 5,000 past where this route broke
    # its wall, when its checkpoints were lost with the machine; so the recipe keeps the order that was measured.
    # As one command (run R1, three sittings joined by resume_from_checkpoint=latest): 96.3 % at 15 positions,
    # swap drop 96.3, after 84,032 steps (~4.9 h of training on 2 CPU cores; its probe_s5 phase took 28,800 steps).
    "icot_mult_4x4_columns": {
        "task": "icot_mult_4x4",
        "dataset_kwargs": {"chain": "columns_tens_first"},
        "cot_model": "runs/pretrain_icot_mult_4x4_ctf_4L/icot_mult_4x4_ctf_4L-cot",
        "cot_command": "latentrl pretrain --config configs/pretrain_icot_mult_4x4_ctf_4L.yaml",
        "num_eval": 1000,
        "overrides": [
            "c_thought=3", "thoughts_per_step=[3,3,3,3,2]", "max_latent_stage=5", "start_stage=1",
            "stage_advance=converged", "final_stage=5", "gate_metric=next_step_accuracy", "gate_next_steps=4",
            "gate_threshold=0.8", "gate_patience=2", "gate_eval_steps=64", "gate_num_examples=256",
            "max_steps_per_stage=12000", "num_train_examples=1000000", "per_device_train_batch_size=32",
            "learning_rate=3e-4", "reset_optimizer=stage", "max_grad_norm=1.0",
            "probe_head_tokens=[[1,2,3],[4,5,6],[7,8]]", "probe_head_step_shift=[-1,0,0,0,4]",
            "eval_strategy=no", "eval_batch_size=250", "logging_steps=16", "max_length=256", "save_steps=500",
            "save_total_limit=6", "seed=0",
        ],
        "phases": [{"name": "probe_s5", "steps": 40000, "gate": True,
                    "overrides": {"probe_head_step_shift": [-1, 0, 0, 0, 8]}}],
        "finish": {"steps": 4000, "learning_rate": 1e-4},
    },
}


def plot_curve(metrics: list[dict], out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in metrics if "loss" in r and "gate/loss" not in r]
    gate = [r for r in metrics if "gate/next_step_accuracy" in r]
    stages = [r for r in metrics if "stage/index" in r]
    fig, ax = plt.subplots(figsize=(8, 4))
    handles = ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue",
                      label="train loss (CE per token + probe)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    handles += ax2.plot([r["step"] for r in gate], [r["gate/next_step_accuracy"] for r in gate], color="tab:orange",
                        label="gate: next step exact (teacher-forced, 256 gate problems)")
    probe = [r for r in train if "probe_accuracy" in r]
    if probe:
        handles += ax2.plot([r["step"] for r in probe], [r["probe_accuracy"] for r in probe], color="tab:green",
                            alpha=0.7, label="thought probe accuracy (train)")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("accuracy")
    for r in stages:  # a dashed line where each stage ended (its gate passed)
        ax.axvline(r["step"], color="grey", lw=0.6, ls="--")
        ax.text(r["step"], ax.get_ylim()[1], f"s{r['stage/index']}|", fontsize=7, va="top", ha="right")
    ax.legend(handles, [h.get_label() for h in handles], loc="lower left", fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def recipe_cot_model(recipe: dict) -> str:
    """The recipe's CoT checkpoint: a shipped model by name, or a folder below the repository that `cot_command`
    writes (exits naming that command when it is missing)."""
    name = recipe["cot_model"]
    if name in available_models():
        return str(model_path(name))
    path = REPO / name
    if not (path / "config.json").is_file():
        sys.exit(f"error: this recipe starts from the CoT model {path}, which does not exist yet; train it with "
                 f"`{recipe['cot_command']}` (run from {REPO}) or pass --cot-model")
    return str(path)


def task_knobs(pairs: list[str]) -> dict[str, int | str]:
    """`--task-knob KEY=VALUE` pairs as data knobs (integers where the value is one)."""
    knobs: dict[str, int | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"error: --task-knob takes KEY=VALUE, got {pair!r}")
        knobs[key] = int(value) if value.lstrip("-").isdigit() else value
    return knobs


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def time_box_signals() -> None:
    """Make SIGTERM (`kill`, `timeout`) and SIGINT interrupt training the way Ctrl-C does, so that a time-boxed run
    still saves and scores its model: a job started with `nohup ... &` from a script ignores SIGINT otherwise."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def finishing_phase(finish: dict, cfg: CoconutConfig) -> dict | None:
    """The recipe's `finish` (with the command line's --finish-* over it) as the last phase: `steps` at
    `learning_rate` (default a third of the run's), the gate unable to end it. None when it has no steps."""
    if int(finish.get("steps", 0)) <= 0:
        return None
    return {"name": "finish", "steps": int(finish["steps"]),
            "learning_rate": finish.get("learning_rate") or cfg.learning_rate / 3, "gate": False}


def carried_overrides(phases: list[dict], k: int) -> dict:
    """The CoconutConfig fields phase k runs with changed: each phase's `overrides` carry on into the phases after it
    (the icot recipe's finish keeps the probe where `probe_s5` moved it)."""
    return {key: value for ph in phases[: k + 1] for key, value in ph.get("overrides", {}).items()}


def phase_config(cfg: CoconutConfig, out: Path, phase: dict, overrides: dict | None = None) -> CoconutConfig:
    """A phase after the curriculum: the run's config at its final stage only, `phase["steps"]` steps from a fresh
    AdamW (and fresh probe heads) at `phase["learning_rate"]` (default the run's), with the CoconutConfig fields in
    `overrides` (`carried_overrides`; default the phase's own) changed, written to `out`. With `"gate": true` the
    gate may end the phase as it ends a stage (e.g. the icot recipe's stage 5 with the probe moved); otherwise it runs
    all its steps. A resumed run
    (`resume_from_checkpoint`) continues the phase from its last checkpoint in `out`, or starts it again when it left
    none (the steps before its first checkpoint are lost either way)."""
    steps = int(phase["steps"])
    resume = bool(cfg.resume_from_checkpoint) and bool(list_checkpoints(out))
    return dataclasses.replace(
        cfg, **(phase.get("overrides", {}) if overrides is None else overrides), output_dir=str(out),
        start_stage=cfg.final_stage, max_steps_per_stage=steps, final_stage_max_steps=None,
        gate_patience=cfg.gate_patience if phase.get("gate") else steps + 1,
        learning_rate=phase.get("learning_rate") or cfg.learning_rate,
        resume_from_checkpoint="latest" if resume else None,
        overwrite_output_dir=bool(cfg.resume_from_checkpoint) and not resume)


CURRICULUM = "curriculum"
"""Subfolder of --out holding the curriculum's final model and `record.json` (its stage log, steps and wall), written
when the curriculum ends; each later phase keeps its end in `<phase>/end` the same way. A resumed run goes on after
the last of these it finds."""


def save_end(model: LatentModel, folder: Path, record: dict) -> None:
    model.save_pretrained(folder)
    (folder / "record.json").write_text(json.dumps(record, indent=1))  # last: it marks the folder whole


def saved_end(folder: Path) -> dict | None:
    """The record of a curriculum or phase that ended in an earlier run into `folder` (None: it has not ended)."""
    path = folder / "record.json"
    return json.loads(path.read_text()) if path.is_file() else None


def phase_end(out: Path, name: str) -> Path:
    return out / CURRICULUM if name == CURRICULUM else out / name / "end"


def score(model: LatentModel, evals: list, cfg: CoconutConfig, stage: int, max_new: int) -> tuple[dict, object]:
    """Pass@1 at the model's stage on the held-out problems, and the thought-swap check on the same problems."""
    from latentrl.thought_dependence import thought_dependence

    ev = coconut_evaluate(model, evals, cfg, stage, max_new_positions=max_new)
    start = model.latent_tokens.start
    dep = thought_dependence(model, evals, operator=coconut_operator(model),
                             schedule=coconut_schedule(model, ev["num_thoughts"][0]), max_new_positions=max_new,
                             batch_size=cfg.eval_batch_size, prompt_text=lambda row: coconut_prompt_text(row, start),
                             seed=cfg.seed)
    return ev, dep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=sorted(RECIPES))
    ap.add_argument("--out", default=None, help="output folder (default runs/latent_init/<task>)")
    ap.add_argument("--cot-model", default=None, help="CoT checkpoint (default: the recipe's shipped one)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the shipped inits: 1)")
    ap.add_argument("--num-eval", type=int, default=None)
    ap.add_argument("--split-steps", default=None, metavar="WORD",
                    help="cut every chain step before each inner WORD (e.g. '(' for iCoT: a multiplication step and "
                         "an addition step where there was one); the CoT text is unchanged")
    ap.add_argument("--task-knob", action="append", default=[], metavar="KEY=VALUE",
                    help="set a knob of the recipe's synthetic task for the training and gate problems (repeatable; "
                         "e.g. chain=columns for icot_mult); the held-out evaluation set is unchanged")
    ap.add_argument("--finish-steps", type=int, default=None,
                    help="after the curriculum reaches its final stage, this many more steps of that stage at "
                         "--finish-lr (a fresh AdamW; the gate cannot end them). Default: the recipe's `finish` "
                         "(chain_sum: 500), else 0. Every shipped init gained 5-24 points from such a phase.")
    ap.add_argument("--finish-lr", type=float, default=None,
                    help="learning rate of the finishing steps (default: the recipe's, else a third of the run's)")
    ap.add_argument("overrides", nargs="*", help="CoconutConfig key=value overrides")
    ns = ap.parse_intermixed_args()
    torch.set_num_threads(ns.threads)
    time_box_signals()
    recipe = RECIPES[ns.task]
    task = suite_tasks()[recipe.get("task", ns.task)]
    data_kwargs = {**task.dataset_kwargs, **recipe.get("dataset_kwargs", {}), **task_knobs(ns.task_knob)}
    cot = ns.cot_model or recipe_cot_model(recipe)
    out = Path(ns.out or REPO / "runs" / "latent_init" / ns.task)
    try:
        cfg = load_config(CoconutConfig, None, [*recipe["overrides"], f"output_dir={out}", "disable_tqdm=true",
                                                *ns.overrides])
    except ConfigError as e:  # a bad override: the message names the key and what it takes
        raise SystemExit(f"error: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    evals = task.eval_examples(ns.num_eval or recipe["num_eval"])
    # a large num_train_examples would draw some held-out questions by chance: the train stream skips them
    train = load_examples(task.dataset, split="train", n=cfg.num_train_examples, seed=cfg.seed,
                          exclude=[e.question for e in evals], **data_kwargs)
    gate = load_examples(task.dataset, split="eval", n=cfg.gate_num_examples, seed=cfg.seed, **data_kwargs)
    if ns.split_steps:
        train, gate, evals = (cut_steps(x, before=ns.split_steps) for x in (train, gate, evals))
    check_disjoint(task, train, evals)
    check_disjoint(task, gate, evals)
    assert not {e.question for e in train} & {e.question for e in gate}, "gate problems overlap training problems"
    finish = {**recipe.get("finish", {}), **{k: v for k, v in (("steps", ns.finish_steps),
                                                               ("learning_rate", ns.finish_lr)) if v is not None}}
    phases = [*recipe.get("phases", []), *filter(None, [finishing_phase(finish, cfg)])]
    legs = [CURRICULUM, *(ph["name"] for ph in phases)]
    # a resumed run goes on after the last leg (the curriculum, then each phase) that ended in an earlier run
    done = max((i for i, name in enumerate(legs) if cfg.resume_from_checkpoint
                and saved_end(phase_end(out, name))), default=-1)
    ended = saved_end(phase_end(out, legs[done])) if done >= 0 else None
    model = LatentModel.from_pretrained(phase_end(out, legs[done]) if ended else cot, add_latent_tokens=True)
    t0 = time.perf_counter()
    from latentrl.logger import read_metrics

    ran: list[dict] = []  # the phases that ran to their end, in this run or an earlier one
    # what the legs before the current one did, and where the current one logs (for an interrupted run's account)
    stage_log, steps, train_wall, leg_dir = [], 0, 0.0, out
    try:
        if ended:
            print(f"{legs[done]} ended in an earlier run (step {ended['steps']}); resuming from "
                  f"{phase_end(out, legs[done])}", flush=True)
            stage_log, steps, train_wall = ended["stage_log"], ended["steps"], ended["train_wall_s"]
            ran = phases[:done]
        else:
            history = train_coconut(cfg, model, train, eval_examples=[], gate_examples=gate)
            stage_log, steps, train_wall = history.stage_log, history.steps, history.train_wall_s
        stage = stage_log[-1]["stage/index"]
        if stage == cfg.final_stage:  # the phases go on from a curriculum that reached its final stage
            if phases and not ended:
                save_end(model, phase_end(out, CURRICULUM),
                         {"stage_log": stage_log, "steps": steps, "train_wall_s": train_wall})
            for k, phase in enumerate(phases):
                if k < done:
                    continue
                leg_dir = out / phase["name"]
                ph = train_coconut(phase_config(cfg, leg_dir, phase, carried_overrides(phases, k)), model, train,
                                   eval_examples=[], gate_examples=gate)
                mark = {"phase": phase["name"], **({"finish": True} if phase["name"] == "finish" else {})}
                stage_log = stage_log + [{**r, **mark} for r in ph.stage_log]
                steps, train_wall = steps + ph.steps, train_wall + ph.train_wall_s
                save_end(model, phase_end(out, phase["name"]),
                         {"stage_log": stage_log, "steps": steps, "train_wall_s": train_wall})
                ran.append(phase)
    except KeyboardInterrupt:  # a time box (kill, timeout, Ctrl-C): keep the model as it is and score it at its stage
        records = read_metrics(leg_dir) if (leg_dir / "metrics.jsonl").is_file() else []
        # before the leg's first logged step: the model is still the one it started from, at the leg's first stage
        first = cfg.start_stage if leg_dir == out else cfg.final_stage
        wall0 = time.perf_counter() - t0 if leg_dir == out else 0.0
        last = ([r for r in records if "train_wall_s" in r] or [{"stage": first, "step": 0, "train_wall_s": wall0}])[-1]
        mark = {} if leg_dir == out else {"phase": leg_dir.name}
        stage_log = ([] if leg_dir == out else stage_log) + [{**r, **mark} for r in records if "stage/index" in r] \
            + [{"stage/index": last["stage"], "stage/reason": "interrupted", **mark}]
        stage = last["stage"]
        steps, train_wall = (0, 0.0) if leg_dir == out else (steps, train_wall)
        steps, train_wall = steps + last["step"], train_wall + last["train_wall_s"]
        print(f"interrupted at step {steps}, stage {stage}" + (f" ({leg_dir.name})" if mark else ""), flush=True)
    wall = time.perf_counter() - t0
    model.save_pretrained(out)
    try:
        ev, dep = score(model, evals, cfg, stage, task.max_completion_length)
    except KeyboardInterrupt:  # a second signal while scoring: the weights are on disk, say so instead of a traceback
        sys.exit(f"interrupted while scoring: the model (stage {stage}, step {steps}) is saved in {out}, not scored")
    n_thoughts = ev["num_thoughts"][0]
    n = ev["n"]
    result = {
        "task": ns.task, "cot_model": cot, "final_stage": stage, "num_thoughts": n_thoughts,
        "pass_at_1": ev["pass_at_1"], "pass_at_1_se": binomial_se(ev["pass_at_1"], n), "n_eval": n,
        "mean_reasoning_positions": ev["mean_reasoning_positions"], "thought_dependence": dep.to_dict(),
        "stages": stage_log, "steps": steps, "train_wall_s": round(train_wall, 1),
        "wall_s": round(wall, 1), "threads": ns.threads, "config": config_to_dict(cfg), "samples": ev["samples"],
        "phases": ran,
        "finish": next(({"steps": ph["steps"], "learning_rate": ph["learning_rate"]} for ph in ran
                        if ph["name"] == "finish"), None),
        # the base's draws and this one's (`latentrl.data.provenance`: RL prompts stay off them)
        "train_data": [d.to_dict() for d in read_train_draws(cot)]
        + [TrainDraw.of_train_split(task.dataset, cfg.num_train_examples, cfg.seed, **data_kwargs).to_dict()],
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    # what a shipped copy of the folder says about itself (tests/test_latent_inits.py reads num_thoughts)
    (out / "latent_init.json").write_text(json.dumps({
        "command": "PYTHONPATH=src python scripts/train_latent_init.py " + " ".join(sys.argv[1:]),
        "scored_with": {"method": "coconut_grpo"},  # `latentrl eval` reads its thoughts with this method
        **{k: v for k, v in result.items() if k != "samples"}}, indent=1))
    if (out / "metrics.jsonl").is_file():
        plot_curve(read_metrics(out), out / "curve.png",
                   f"{ns.task}: gated Coconut curriculum from {Path(cot).name}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "samples")}, indent=1))


if __name__ == "__main__":
    main()
