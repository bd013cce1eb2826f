"""`latentrl bench`: every registered method on the CPU suite, same budget and seed, one results table.

For each (method, task): build the method's starting checkpoint (`Method.init`: the shipped CoT model, or a latent
SFT stage run from it and cached under the output folder), RL-train it with its CPU preset `configs/cpu/<name>.yaml`,
evaluate Pass@1 (greedy), Pass@k (sampled) and reasoning positions on the task's evaluation set, and write
`results.json`, `results.md` and `accuracy_vs_length.png`. Baselines (no-CoT SFT, CoT SFT) are evaluated as shipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentrl.checkpoint import atomic_write_json, atomic_write_text
from latentrl.config import GRPOConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_PRESETS = REPO_ROOT / "configs" / "cpu"


@dataclass
class SuiteTask:
    """One task of the CPU suite: where its shipped checkpoints are and what it is evaluated on."""

    name: str
    dataset: str  # training prompts (task name for synthetic data)
    eval_source: str  # evaluation data: a real file when we have one
    cot_model: str  # asset name of the CoT-SFT checkpoint
    nocot_model: str
    max_completion_length: int
    dataset_kwargs: dict[str, Any]


def suite_tasks() -> dict[str, SuiteTask]:
    from latentrl.data.paths import shared_data_file

    return {
        "icot_mult_4x4": SuiteTask(
            name="icot_mult_4x4", dataset="icot_mult", eval_source=str(shared_data_file("icot_mult_4x4/valid.txt")),
            cot_model="icot_mult_4x4-cot", nocot_model="icot_mult_4x4-nocot", max_completion_length=64,
            dataset_kwargs={"digits": 4},
        ),
    }


# ---------------------------------------------------------------------------------------- starting checkpoints
InitBuilder = Callable[[SuiteTask, Path, bool], Path]
INIT_BUILDERS: dict[str, InitBuilder] = {}


def register_init(name: str):
    def deco(fn: InitBuilder) -> InitBuilder:
        INIT_BUILDERS[name] = fn
        return fn

    return deco


@register_init("cot_sft")
def _cot_init(task: SuiteTask, cache: Path, quick: bool) -> Path:
    from latentrl.assets import model_path

    return model_path(task.cot_model)


@register_init("superposition_sft")
def _superposition_init(task: SuiteTask, cache: Path, quick: bool) -> Path:
    from latentrl.sft.superposition import build_superposition_init

    return build_superposition_init(task, cache, quick)


@register_init("coconut_sft")
def _coconut_init(task: SuiteTask, cache: Path, quick: bool) -> Path:
    from latentrl.sft.coconut import build_coconut_init

    return build_coconut_init(task, cache, quick)


def build_init(name: str, task: SuiteTask, out: Path, quick: bool) -> Path:
    if name not in INIT_BUILDERS:
        raise ValueError(f"no builder for starting checkpoint {name!r}; known: {sorted(INIT_BUILDERS)}")
    return INIT_BUILDERS[name](task, out / "inits" / task.name, quick)


# ---------------------------------------------------------------------------------------- one run
def preset_path(method: str) -> Path:
    path = CPU_PRESETS / f"{method}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"method {method!r} has no CPU preset {path}")
    return path


def run_method(method_name: str, task: SuiteTask, out: Path, *, quick: bool, seed: int, k: int,
               num_eval: int, overrides: list[str] = ()) -> dict[str, Any]:
    from latentrl.data import load_examples
    from latentrl.eval import evaluate
    from latentrl.methods import get_method
    from latentrl.model import LatentModel

    method = get_method(method_name)
    init_path = build_init(method.init, task, out, quick)
    run_dir = out / "runs" / f"{method_name}-{task.name}"
    extra = [f"model_name_or_path={init_path}", f"output_dir={run_dir}", f"seed={seed}", f"method={method_name}",
             f"max_completion_length={task.max_completion_length}", "save_steps=0", "save_total_limit=1"]
    if quick:
        extra.append("max_steps=" + str(QUICK_STEPS))
    cfg = load_config(GRPOConfig, preset_path(method_name), [*extra, *overrides])
    model = LatentModel.from_pretrained(init_path, add_latent_tokens=True)
    train = load_examples(task.dataset, split="train", n=cfg.num_train_examples, seed=seed, **task.dataset_kwargs)
    t0 = time.perf_counter()
    trainer = method.trainer_class(cfg, model, train)
    trainer.train()
    train_wall = time.perf_counter() - t0
    res = evaluate(model, load_examples(task.eval_source)[:num_eval], operator=trainer.operator,
                   schedule=trainer.schedule, max_new_positions=task.max_completion_length, k=k, seed=seed,
                   prompt_text=trainer.prompt_text)
    return row(method_name, task.name, res, train_wall, method.init, run_dir)


def eval_checkpoint(label: str, path: Path, task: SuiteTask, *, k: int, seed: int, num_eval: int) -> dict[str, Any]:
    from latentrl.data import load_examples
    from latentrl.eval import evaluate
    from latentrl.model import LatentModel

    model = LatentModel.from_pretrained(path)
    res = evaluate(model, load_examples(task.eval_source)[:num_eval], max_new_positions=task.max_completion_length,
                   k=k, seed=seed)
    return row(label, task.name, res, 0.0, "shipped checkpoint", path)


def row(method: str, task: str, res, train_wall: float, init: str, where: Path) -> dict[str, Any]:
    return {
        "method": method, "task": task, "pass_at_1": res.pass_at_1, "pass_at_k": res.pass_at_k, "k": res.k,
        "mean_reasoning_positions": res.mean_reasoning_positions, "mean_latent_positions": res.mean_latent_positions,
        "train_wall_s": round(train_wall, 1), "eval_wall_s": round(res.wall_s, 1), "n_eval": res.n, "init": init,
        "run_dir": str(where), "samples": res.samples,
    }


QUICK_STEPS = 20


# ---------------------------------------------------------------------------------------- reporting
def results_markdown(rows: list[dict[str, Any]]) -> str:
    head = "| method | task | init | Pass@1 | Pass@k (k) | reasoning positions | latent positions | train s |\n"
    head += "|---|---|---|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        pk = "—" if r["pass_at_k"] is None else f"{100 * r['pass_at_k']:.1f} ({r['k']})"
        lines.append(f"| {r['method']} | {r['task']} | {r['init']} | {100 * r['pass_at_1']:.1f} | {pk} | "
                     f"{r['mean_reasoning_positions']:.1f} | {r['mean_latent_positions']:.1f} | {r['train_wall_s']:.0f} |")
    return head + "\n".join(lines) + "\n"


def plot_accuracy_vs_length(rows: list[dict[str, Any]], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["mean_reasoning_positions"], 100 * r["pass_at_1"], s=60)
        ax.annotate(r["method"], (r["mean_reasoning_positions"], 100 * r["pass_at_1"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("mean reasoning positions per answer (latent + token)")
    ax.set_ylabel("Pass@1 (%)")
    ax.set_title("Accuracy vs reasoning length")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def run_bench(out: Path, *, quick: bool, methods: list[str] | None, tasks: list[str] | None, seed: int = 0,
              k: int = 4, num_eval: int | None = None) -> list[dict[str, Any]]:
    from latentrl.methods import METHODS
    from latentrl.assets import model_path

    out.mkdir(parents=True, exist_ok=True)
    num_eval = num_eval or (100 if quick else 1000)
    all_tasks = suite_tasks()
    rows: list[dict[str, Any]] = []
    for tname in tasks or list(all_tasks):
        task = all_tasks[tname]
        rows.append(eval_checkpoint("nocot_sft", model_path(task.nocot_model), task, k=k, seed=seed, num_eval=num_eval))
        rows.append(eval_checkpoint("cot_sft", model_path(task.cot_model), task, k=k, seed=seed, num_eval=num_eval))
        for name in methods or sorted(METHODS):
            rows.append(run_method(name, task, out, quick=quick, seed=seed, k=k, num_eval=num_eval))
            write_results(out, rows)  # keep partial results if a later method fails
    write_results(out, rows)
    return rows


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_json(out / "results.json", [{k: v for k, v in r.items() if k != "samples"} for r in rows])
    atomic_write_text(out / "results.md", results_markdown(rows))
    (out / "samples.json").write_text(json.dumps([{"method": r["method"], "samples": r["samples"]} for r in rows], indent=1))
    plot_accuracy_vs_length(rows, out / "accuracy_vs_length.png")
