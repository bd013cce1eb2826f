"""Train a shipped superposition latent init (Latent-GRPO's starting point): one latent per chain-of-thought step.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/train_superposition_init.py OUT [key=value ...]

From the task's converged CoT model (`<cot_model>-converged`; chain_sum: 100 %), superposition SFT
(`latentrl.sft.superposition`) with `tokens_per_latent=7`: each `<< a + b = c >>` step of chain_sum becomes one
latent, the uniform superposition of its 7 token embeddings, so 7 latents replace 49 CoT positions. The model learns
to predict each next latent's token distribution (KL) and the answer after the last one (CE). Defaults are the
shipped `chain_sum-superposition` recipe; keys: task (chain_sum | icot_mult_4x4), tokens_per_latent, chunk_sizes
(comma-separated lengths of the first chunks, e.g. 3,3,3,3,3,3,3,3,3,3,4,4,4,4), chunk_weights (count | positional),
self_feed (0; the fraction of latent inputs that are the model's own), max_steps, learning_rate, finish_steps (1000),
finish_lr, num_train, num_eval (500), stage_advance (fixed | converged), gate_metric, gate_threshold, gate_eval_steps
(100), save_steps (1000), resume (latest: continue OUT/train after an interruption, or a finished run to a larger
max_steps, its model and results kept in OUT/at_step_<N>/), threads (1); cot_model (a shipped model name or a folder;
default the task's converged CoT model) and chain (icot_mult's chain knob for the training and gate problems, e.g.
`chain=partials` with a CoT model trained on that chain; the scored file is the task's own).

The stage runs a fixed 15,000 steps: the teacher-forced gates do not measure what generation needs here — the
teacher-forced answer accuracy passes at 300 steps (the answer digit is in the last target latent) and the loss
reaches 0.028 by 700, both at chance when the model writes its own latents (docs/bench/chain_sum/superposition_init).
`stage_advance=converged gate_metric=generated_accuracy gate_threshold=0.85` gates on the model's own latents
instead (greedy Pass@1 on 256 gate problems every 100 steps), with max_steps the cap.

Then `finish_steps` (1000) more steps at `finish_lr` (a third of learning_rate): a fresh AdamW, no gate, metrics and
checkpoints in OUT/finish (`resume=latest` continues them too). The constant rate leaves every init short of what it
reaches (chain_sum: 87.0 % after the 15,000 steps, 96.0 % after the finish; docs/methods/coconut.md, "Finish at a
lower learning rate"). `finish_steps=0` skips it: the commands recorded before 2026-12-07 ran without it.

Scored as `latentrl bench` scores a latent_grpo row (the `gumbel_topk` operator of configs/cpu/latent_grpo.yaml in
eval mode, the suite's first 500 held-out problems: Pass@1 greedy, Pass@4 sampled, reasoning positions) plus the
thought-dependence check. Writes OUT/model (with latent_init.json and metrics.jsonl: what a shipped init carries),
OUT/history.json and OUT/result.json; OUT/train holds the live metrics.jsonl and resumable checkpoints.

`score=MODEL` (a checkpoint folder, e.g. OUT/train/checkpoint-60000 of a run still training) skips training and
scores that model the same way into OUT/scored/<MODEL's folder name>.json (never overwritten); `task` as for the run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from latentrl.assets import resolve_model
from latentrl.bench import check_disjoint, suite_tasks
from latentrl.checkpoint import latest_checkpoint
from latentrl.config import GRPOConfig, config_to_dict, load_config
from latentrl.data import load_examples
from latentrl.data.provenance import TrainDraw, read_train_draws
from latentrl.eval import evaluate
from latentrl.methods import get_method
from latentrl.model import LatentModel
from latentrl.sft.superposition import SuperpositionSFTConfig, train_superposition_sft
from latentrl.thought_dependence import method_thought_dependence

REPO = Path(__file__).resolve().parents[1]
NUM_EVAL = 500


def keep_finished_run(out: Path) -> None:
    """Move a finished run's model, results and finishing phase into OUT/at_step_<N>/ before a resumed run writes
    new ones (the resumed run continues OUT/train, then finishes afresh)."""
    steps = json.loads((out / "result.json").read_text())["steps"] if (out / "result.json").exists() else "unknown"
    dest = out / f"at_step_{steps}"
    if dest.exists():
        raise SystemExit(f"{dest} exists: move it away first (nothing is overwritten)")
    dest.mkdir()
    for name in ("model", "result.json", "history.json", "finish"):
        if (out / name).exists():
            (out / name).rename(dest / name)
    print(f"the finished run's model and results moved to {dest}", flush=True)


#: how the model is scored, recorded in its latent_init.json (`latentrl eval` on the folder uses it)
SCORED_WITH = {"method": "latent_grpo", "config": "configs/cpu/latent_grpo.yaml"}


def finishing_config(cfg: SuperpositionSFTConfig, out: Path, finish: dict) -> SuperpositionSFTConfig:
    """The finishing phase: the run's config for `finish["steps"]` fixed steps at `finish["learning_rate"]`,
    written to `out`; a resumed run continues the phase from its latest checkpoint there, if it had one."""
    resume = "latest" if cfg.resume_from_checkpoint and latest_checkpoint(out) is not None else None
    return dataclasses.replace(cfg, output_dir=str(out), max_steps=finish["steps"], stage_advance="fixed",
                               learning_rate=finish["learning_rate"], resume_from_checkpoint=resume)


def score(model_dir: Path, task, run_dir: Path, test: list):
    """(evaluation, thought dependence) of `model_dir` as the bench scores a latent_grpo row: its CPU preset's
    operator, schedule and prompt, greedy Pass@1 and Pass@4 on `test`, latents swapped / zeroed."""
    run = load_config(GRPOConfig, REPO / SCORED_WITH["config"],
                      [f"model_name_or_path={model_dir}", f"dataset={task.dataset}",
                       f"max_completion_length={task.max_completion_length}", "report_to=[none]",
                       f"output_dir={run_dir}", "beta=0"])
    lm = LatentModel.from_pretrained(str(model_dir))
    parts = get_method(SCORED_WITH["method"]).build(lm, run)
    return evaluate(lm, test, k=4, **parts.eval_kwargs(run)), method_thought_dependence(lm, parts, run, test)


def scored_fields(res, dep) -> dict:
    """The result fields of a score (Pass@1 with its standard error, the rest of the evaluation, the swap check)."""
    return {"pass_at_1": res.pass_at_1, "pass_at_1_se": res.pass_at_1_se, "n_eval": res.n,
            **{k: v for k, v in res.to_dict().items() if k not in ("samples", "pass_at_1", "pass_at_1_se", "n")},
            "thought_dependence": dep.to_dict() if dep is not None else None}


def score_only(out: Path, model_dir: Path, task) -> None:
    """`score=MODEL`: score one model (a checkpoint of a run in progress) without training."""
    dest = out / "scored" / f"{model_dir.name}.json"
    if dest.exists():
        raise SystemExit(f"{dest} exists (nothing is overwritten)")
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"{model_dir} is not a model folder (no config.json)")
    test = task.eval_examples(NUM_EVAL)
    res, dep = score(model_dir, task, out / "eval_run", test)
    result = {"command": "PYTHONPATH=src python scripts/train_superposition_init.py " + " ".join(sys.argv[1:]),
              "model": str(model_dir), "task": task.name, **scored_fields(res, dep)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({**result, "samples": res.samples}, indent=1))
    print(json.dumps(result), flush=True)


KEYS = ("task", "tokens_per_latent", "chunk_sizes", "chunk_weights", "self_feed", "max_steps", "learning_rate",
        "finish_steps", "finish_lr", "num_train", "num_eval", "stage_advance", "gate_metric", "gate_threshold",
        "gate_eval_steps", "save_steps", "resume", "threads", "cot_model", "chain", "score")


def parse_keys(args: list[str]) -> dict[str, str]:
    """key=value arguments, every key one of KEYS: a typo is an error, not a setting silently left at its default."""
    over = {}
    for a in args:
        key, eq, value = a.partition("=")
        if not eq or key not in KEYS:
            raise SystemExit(f"{a!r}: expected key=value with key one of {', '.join(KEYS)}")
        over[key] = value
    return over


def number(over: dict[str, str], key: str, default: float, kind: type = int) -> float:
    """`over[key]` (or `default`) as a number of `kind`, with a clear error for anything else."""
    try:
        return kind(over.get(key, default))
    except ValueError:
        raise SystemExit(f"{key}={over[key]!r}: expected {'an integer' if kind is int else 'a number'}") from None


def suite_task(over: dict[str, str]):
    """The suite task named by `task` (default chain_sum), with a clear error for any other name."""
    tasks = suite_tasks()
    if over.get("task", "chain_sum") not in tasks:
        raise SystemExit(f"task={over['task']!r}: expected one of {', '.join(tasks)}")
    return tasks[over.get("task", "chain_sum")]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    over = parse_keys(sys.argv[2:])
    if "score" in over:
        torch.set_num_threads(number(over, "threads", 1))
        return score_only(out, Path(over["score"]), suite_task(over))
    if (out / "model").exists():
        if "resume" not in over:
            raise SystemExit(f"{out / 'model'} exists: choose a new OUT, or continue it with resume=latest and a "
                             "larger max_steps (nothing is overwritten)")
        keep_finished_run(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(number(over, "threads", 1))
    cfg = SuperpositionSFTConfig(
        tokens_per_latent=number(over, "tokens_per_latent", 7), top_k=10,
        chunk_weights=over.get("chunk_weights", "count"),
        chunk_sizes=[int(n) for n in over.get("chunk_sizes", "").split(",") if n.strip()],
        max_steps=number(over, "max_steps", 15000), per_device_train_batch_size=32,
        learning_rate=number(over, "learning_rate", 3e-4, float), self_feed=number(over, "self_feed", 0.0, float),
        stage_advance=over.get("stage_advance", "fixed"),
        gate_metric=over.get("gate_metric", "loss"), gate_threshold=number(over, "gate_threshold", 0.05, float),
        gate_patience=2, gate_eval_steps=number(over, "gate_eval_steps", 100), gate_num_examples=256,
        logging_steps=50, disable_tqdm=True, seed=0,
        output_dir=str(out / "train"), report_to=["jsonl"], save_steps=number(over, "save_steps", 1000),
        resume_from_checkpoint=over.get("resume"),
    )
    finish = {"steps": number(over, "finish_steps", 1000),
              "learning_rate": number(over, "finish_lr", cfg.learning_rate / 3, float)}
    task = suite_task(over)
    data_kwargs = {**task.dataset_kwargs, **({"chain": over["chain"]} if "chain" in over else {})}
    test = task.eval_examples(number(over, "num_eval", NUM_EVAL))
    # the scored problems stay out of the draw (a million icot draws hit a few of the real valid file's)
    train = load_examples(task.dataset, split="train", n=number(over, "num_train", 8000), seed=0,
                          exclude=[e.question for e in test], **data_kwargs)
    gate = load_examples(task.dataset, split="eval", n=256, seed=0, **data_kwargs)
    check_disjoint(task, train, test)
    check_disjoint(task, gate, test)
    cot = over.get("cot_model", f"{task.cot_model}-converged")
    ckpt = latest_checkpoint(out / "train") if cfg.resume_from_checkpoint else None
    if ckpt is not None and not Path(resolve_model(cot)).exists():
        # the resume replaces every weight: a starting model removed since (e.g. another run's rotated checkpoint)
        # is not needed, the checkpoint has the architecture
        print(f"cot_model {cot} is gone; resuming from {ckpt} (its weights replace the starting model's anyway)")
        model = LatentModel.from_pretrained(ckpt)
    else:
        model = LatentModel.from_pretrained(resolve_model(cot))
    t0 = time.perf_counter()
    hist = train_superposition_sft(cfg, model, train, gate_examples=gate)
    finished = None  # the finishing phase's settings once it has run
    if finish["steps"] > 0:
        fin = train_superposition_sft(finishing_config(cfg, out / "finish", finish), model, train)
        # the finish's own records count from 1 in OUT/finish; in the model's curve they continue the run's steps
        hist.train += [{**r, "step": r["step"] + hist.steps, "finish": True} for r in fin.train]
        hist.stage_log += [{**r, "finish": True} for r in fin.stage_log]
        finished = finish
    train_s = time.perf_counter() - t0
    model.save_pretrained(out / "model")
    (out / "history.json").write_text(json.dumps({"config": config_to_dict(cfg), "train": hist.train,
                                                   "gate": hist.gate, "stages": hist.stage_log,
                                                   "finish": finished}, indent=1))
    with open(out / "model" / "metrics.jsonl", "w") as f:
        for rec in hist.train:
            f.write(json.dumps(rec) + "\n")
    res, dep = score(out / "model", task, out / "eval_run", test)
    result = {"command": "PYTHONPATH=src python scripts/train_superposition_init.py " + " ".join(sys.argv[1:]),
              "task": task.name, "scored_with": SCORED_WITH, "cot_model": cot, "train_s": round(train_s, 1),
              "steps": sum(r["stage/steps"] for r in hist.stage_log), "stages": hist.stage_log, "finish": finished,
              "tokens_per_latent": cfg.tokens_per_latent, "chunk_sizes": cfg.chunk_sizes, **scored_fields(res, dep),
              # the base's draws and this one's (`latentrl.data.provenance`: RL prompts stay off them)
              "train_data": [d.to_dict() for d in read_train_draws(resolve_model(cot))]
              + [TrainDraw.of_train_split(task.dataset, len(train), 0, **data_kwargs).to_dict()]}
    (out / "result.json").write_text(json.dumps({**result, "samples": res.samples}, indent=1))
    (out / "model" / "latent_init.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
