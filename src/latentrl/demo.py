"""`latentrl demo`: the embedded default, end to end on CPU in minutes.

Loads the shipped CoT-SFT checkpoint, evaluates it on the real iCoT 4×4 validation file, RL-trains it with a
method preset, evaluates again, prints a results table and writes curves (PNG) and TensorBoard logs into a run
folder it names.
"""

from __future__ import annotations

import time
from pathlib import Path

from latentrl.config import GRPOConfig, load_config


def run_demo(method: str = "grpo", steps: int = 40, num_eval: int = 200, out_dir: str | None = None, seed: int = 0,
             overrides: list[str] = (), model: str | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from latentrl.assets import model_path
    from latentrl.bench import preset_path, suite_tasks
    from latentrl.data import load_examples
    from latentrl.logger import plot_metrics
    from latentrl.methods import get_method
    from latentrl.model import LatentModel
    from latentrl.run_dir import check_run_folder

    console = Console()
    task = suite_tasks()["icot_mult_4x4"]
    run_dir = Path(out_dir or f"runs/demo-{method}-{time.strftime('%Y%m%d-%H%M%S')}")
    init = Path(model) if model else model_path(task.cot_model)
    cfg = load_config(GRPOConfig, preset_path(method), [
        f"model_name_or_path={init}", f"output_dir={run_dir}", f"max_steps={steps}", f"seed={seed}",
        f"method={method}", f"max_completion_length={task.max_completion_length}", "save_steps=0", *overrides,
    ])
    check_run_folder(cfg)  # an --out holding an earlier run is refused before the model loads
    console.print(f"[bold]latentrl demo[/bold]: {method} on {task.name} from {init.name}; run folder {run_dir}")
    lm = LatentModel.from_pretrained(init, add_latent_tokens=True)
    evalset = load_examples(task.eval_source)[:num_eval]
    train = load_examples(task.dataset, split="train", n=cfg.num_train_examples, seed=seed, **task.dataset_kwargs)
    cfg.eval_steps = max(1, steps // 4)
    trainer = get_method(method).trainer_class(cfg, lm, train, eval_dataset=evalset)

    def score():
        return trainer.evaluate(k=4)

    before = score()
    console.print(f"before: Pass@1 {100 * before.pass_at_1:.1f}%  ({before.n} real iCoT 4x4 problems)")
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    after = score()

    table = Table(title=f"latentrl demo — {method} on {task.name} (n={after.n}, real validation file)")
    for col in ("", "Pass@1", f"Pass@{after.k}", "reasoning positions", "train s"):
        table.add_column(col, justify="right")
    for label, r, t in (("before (CoT SFT)", before, 0.0), (f"after {steps} {method} steps", after, train_s)):
        table.add_row(label, f"{100 * r.pass_at_1:.1f}%", f"{100 * (r.pass_at_k or 0):.1f}%",
                      f"{r.mean_reasoning_positions:.1f}", f"{t:.0f}")
    console.print(table)
    png = plot_metrics(run_dir / "metrics.jsonl", run_dir / "curves.png",
                       ["eval/pass_at_1", "reward", "frac_reward_zero_std", "completions/mean_length", "entropy",
                        "grad_norm"],
                       title=f"{method} on {task.name}", missing="skip")
    console.print(f"curves: {png}\nTensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    summary = {"method": method, "steps": steps, "before": before.to_dict(), "after": after.to_dict(),
               "train_wall_s": train_s, "run_dir": str(run_dir)}
    from latentrl.checkpoint import atomic_write_json

    atomic_write_json(run_dir / "demo_results.json", summary)
    return summary
