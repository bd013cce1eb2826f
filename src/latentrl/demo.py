"""`latentrl demo`: the embedded default, end to end on CPU in about two minutes (`run_full_demo`), in three parts
(two latent, one RL), each with its table and plots in its own sub-folder of the run folder, then one summary table:

1. latent reasoning (`run_latent_demo`, also `latentrl demo --latent [--task T]` alone), once per task with a shipped
   latent init (chain_sum: `chain_sum-coconut`, every step of the chain a Coconut thought; iCoT 4×4:
   `icot_mult_4x4-coconut`, 14 thoughts, on the real validation file): on the same problems, the shipped CoT model,
   the shipped latent init and that init after a short coconut_grpo run, each with Pass@1 ± its standard error,
   mean reasoning positions and, for the latent rows, the thought-swap drop (`latentrl.thought_dependence`);
2. RL on a real validation file (`run_demo`, also `latentrl demo --method NAME` alone): the shipped CoT-SFT
   checkpoint evaluated on the real iCoT 4×4 validation file, RL-trained with a method preset, evaluated again.
"""

from __future__ import annotations

import time
from pathlib import Path

from latentrl.config import ConfigError, GRPOConfig, load_config

#: the sub-folders of the full demo's run folder
FULL_DEMO_PARTS = ("latent", "latent-icot", "icot-grpo")


def run_full_demo(steps: int = 40, num_eval: int | None = None, out_dir: str | None = None, seed: int = 0,
                  overrides: list[str] = ()) -> dict:
    """Both demos into one run folder (`latent/` chain_sum, `latent-icot/` iCoT 4×4, `icot-grpo/`), then a summary
    table of every row: what latent reasoning buys (the same or better accuracy from a chain 3-6x shorter, thoughts
    that matter) next to what RL does to the CoT model on the real iCoT file. `num_eval`: problems per part
    (default: each part's own)."""
    from rich.table import Table

    from latentrl.bench import percent_se, points_se
    from latentrl.checkpoint import atomic_write_json

    t0 = time.perf_counter()
    run_dir = Path(out_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    taken = [run_dir / part for part in FULL_DEMO_PARTS if (run_dir / part).exists()]
    if taken and not any(o.replace(" ", "") == "overwrite_output_dir=true" for o in overrides):
        raise ConfigError(f"{taken[0]} holds an earlier demo: choose another --out (or overwrite_output_dir=true)")
    latents = [run_latent_demo(steps=steps, num_eval=num_eval or 500, out_dir=str(run_dir / part), seed=seed,
                               overrides=overrides, task_name=task_name)
               for part, task_name in zip(FULL_DEMO_PARTS[:2], LATENT_DEMO_TASKS, strict=True)]
    rl = run_demo(method="grpo", steps=steps, num_eval=num_eval or 200, out_dir=str(run_dir / FULL_DEMO_PARTS[2]),
                  seed=seed, overrides=overrides)
    wall = time.perf_counter() - t0

    console = _wide_console()
    table = Table(title="latentrl demo: every row (% ± one standard error)")
    for col in ("task", "model", "n", "Pass@1", "positions", "swap drop"):
        table.add_column(col, justify="right")
    for latent in latents:
        for label, r in zip(("CoT SFT", "latent init", f"coconut_grpo {steps} st."), latent["rows"]):
            dep = r["thought_dependence"]
            table.add_row(latent["task_label"], label, str(r["n_eval"]), percent_se(r["pass_at_1"], r["n_eval"]),
                          f"{r['mean_reasoning_positions']:.1f}",
                          points_se(dep['drop_swap'], dep['drop_swap_se']) if dep else "—")
    for label, r in (("CoT SFT", rl["before"]), (f"grpo {steps} st.", rl["after"])):
        table.add_row("icot 4x4 (real valid)", label, str(r["n"]), percent_se(r["pass_at_1"], r["n"]),
                      f"{r['mean_reasoning_positions']:.1f}", "—")
    console.print(table)
    console.print(f"positions = reasoning positions before the answer; swap drop = Pass@1 points lost when each "
                  f"problem's thoughts are replaced by another problem's\nparts: {run_dir / FULL_DEMO_PARTS[0]}, "
                  f"{run_dir / FULL_DEMO_PARTS[1]} (latent reasoning), {run_dir / FULL_DEMO_PARTS[2]} (RL on the "
                  f"real iCoT 4x4 file); wall time {wall:.0f} s")
    summary = {"latent": latents[0], "latent_icot": latents[1], "icot_grpo": rl, "wall_s": wall,
               "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "demo_results.json", summary)
    return summary


def run_demo(method: str = "grpo", steps: int = 40, num_eval: int = 200, out_dir: str | None = None, seed: int = 0,
             overrides: list[str] = (), model: str | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from latentrl.assets import model_path
    from latentrl.bench import preset_path, rl_prompts, suite_tasks
    from latentrl.data import load_examples
    from latentrl.logger import plot_metrics
    from latentrl.methods import get_method
    from latentrl.model import LatentModel
    from latentrl.run_dir import check_new_run

    console = Console()
    task = suite_tasks()["icot_mult_4x4"]
    run_dir = Path(out_dir or f"runs/demo-{method}-{time.strftime('%Y%m%d-%H%M%S')}")
    init = Path(model) if model else model_path(task.cot_model)
    get_method(method)  # an unknown method names the registered ones
    cfg = load_config(GRPOConfig, preset_path(method), [
        f"model_name_or_path={init}", f"output_dir={run_dir}", f"max_steps={steps}", f"seed={seed}",
        f"method={method}", f"max_completion_length={task.max_completion_length}", "save_steps=0", *overrides,
    ])
    check_new_run(cfg.output_dir, overwrite=cfg.overwrite_output_dir, resumable=False, key="--out")  # before loading
    console.print(f"[bold]latentrl demo[/bold]: {method} on {task.name} from {init.name}; run folder {run_dir}")
    lm = LatentModel.from_pretrained(init, add_latent_tokens=True)
    evalset = load_examples(task.eval_source)[:num_eval]
    prompts = rl_prompts(task, init, cfg.num_train_examples, seed)  # none the starting model trained on
    train = prompts.examples
    cfg.eval_steps = max(1, steps // 4)
    trainer = get_method(method).trainer_class(cfg, lm, train, eval_dataset=evalset)
    trainer.train_data = prompts.record

    def score():
        return trainer.evaluate(k=4)

    before = score()
    console.print(f"before: Pass@1 {100 * before.pass_at_1:.1f}%  ({before.n} real iCoT 4x4 problems)")
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    after = score()

    table = Table(title=f"latentrl demo — {method} on {task.name} (n={after.n}, real validation file)")
    for col in ("", "Pass@1", f"Pass@{after.k} (T={after.temperature:g})", "reasoning positions", "train s"):
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


#: the latent demo's RL method and the suite tasks it runs on (each from its shipped latent init,
#: `SuiteTask.shipped_inits`); the first is `latentrl demo --latent`'s default
LATENT_DEMO_METHOD = "coconut_grpo"
LATENT_DEMO_TASKS = ("chain_sum", "icot_mult_4x4")
LATENT_DEMO_TASK_LABELS = {"chain_sum": "chain_sum (held out)", "icot_mult_4x4": "icot 4x4 (real valid)"}


def run_latent_demo(steps: int = 40, num_eval: int = 500, out_dir: str | None = None, seed: int = 0, k: int = 4,
                    overrides: list[str] = (), model: str | None = None, task_name: str = LATENT_DEMO_TASKS[0]) -> dict:
    """CoT vs latent reasoning on the same held-out problems of suite task `task_name`: the shipped CoT model, the
    shipped latent init, and coconut_grpo after `steps` RL steps from that init (the bench's preset and task
    overrides).

    Every row: greedy Pass@1 with its binomial standard error over `num_eval` problems, Pass@k sampled at the RL
    preset's temperature (the same for every row), mean reasoning positions (latent + token positions before `####`);
    latent rows also get the thought-dependence check (Pass@1 with thoughts swapped between problems / zeroed).
    Writes `demo_results.json`, `curves.png` (the RL run's metrics), `accuracy_vs_length.png` and TensorBoard logs
    into the run folder."""
    from rich.table import Table

    from latentrl.assets import available_models, model_path, resolve_model
    from latentrl.bench import (
        check_disjoint,
        percent_se,
        plot_accuracy_vs_length,
        points_se,
        preset_path,
        rl_prompts,
        row,
        suite_tasks,
    )
    from latentrl.checkpoint import atomic_write_json
    from latentrl.eval import evaluate
    from latentrl.logger import plot_metrics
    from latentrl.methods import get_method
    from latentrl.model import LatentModel
    from latentrl.run_dir import check_new_run
    from latentrl.thought_dependence import trainer_thought_dependence

    t_start = time.perf_counter()
    console = _wide_console()
    method = get_method(LATENT_DEMO_METHOD)
    tasks = suite_tasks()
    if task_name not in tasks:
        raise ConfigError(f"unknown suite task {task_name!r} for the latent demo; known: {', '.join(tasks)}")
    task = tasks[task_name]
    run_dir = Path(out_dir or f"runs/demo-latent-{time.strftime('%Y%m%d-%H%M%S')}")
    shipped = task.shipped_inits.get(method.init)
    if model is None and (shipped is None or shipped not in available_models()):
        raise FileNotFoundError(f"{task.name} has no shipped {method.init} checkpoint (shipped_inits "
                                f"{task.shipped_inits}); the latent demo starts from the shipped latent init "
                                "(`python scripts/train_latent_init.py` trains one) or from --model")
    init = Path(resolve_model(model)) if model else model_path(shipped)
    cfg = load_config(GRPOConfig, preset_path(LATENT_DEMO_METHOD), [
        f"model_name_or_path={init}", f"output_dir={run_dir}", f"max_steps={steps}", f"seed={seed}",
        f"method={LATENT_DEMO_METHOD}", f"max_completion_length={task.max_completion_length}", "save_steps=0",
        "dataset=" + task.dataset, *task.method_overrides.get(LATENT_DEMO_METHOD, ()), *overrides,
    ])
    check_new_run(cfg.output_dir, overwrite=cfg.overwrite_output_dir, resumable=False, key="--out")  # before loading
    cot = model_path(task.cot_model)
    console.print(f"[bold]latentrl demo --latent[/bold]: {task.cot_model} (CoT) vs {init.name} (latent init) vs "
                  f"{LATENT_DEMO_METHOD} after {steps} RL steps from it, on {num_eval} held-out {task.name} "
                  f"problems; run folder {run_dir}")
    evals = task.eval_examples(num_eval)
    prompts = rl_prompts(task, init, cfg.num_train_examples, seed)  # none the latent init trained on
    train = prompts.examples
    check_disjoint(task, train, evals)
    T = cfg.temperature  # Pass@k of every row sampled at the RL preset's temperature

    n_all = len(evals)  # every greedy completion is kept: per-problem scores give paired differences between rows
    cot_res = evaluate(LatentModel.from_pretrained(cot), evals, max_new_positions=task.max_completion_length, k=k,
                       seed=seed, temperature=T, num_samples_to_keep=n_all)
    rows = [row(f"cot_sft ({task.cot_model})", task.name, cot_res, 0.0, "shipped checkpoint", cot)]
    console.print(f"CoT ({task.cot_model}): Pass@1 {percent_se(cot_res.pass_at_1, cot_res.n)}%, "
                  f"{cot_res.mean_reasoning_positions:.1f} reasoning positions")

    lm = LatentModel.from_pretrained(init, add_latent_tokens=True)
    cfg.eval_steps = max(1, steps // 4)
    trainer = method.trainer_class(cfg, lm, train, eval_dataset=evals)
    trainer.train_data = prompts.record

    def score(label: str, train_s: float) -> dict:
        with trainer.gathered(trainer.model):  # what trainer.evaluate does, keeping every problem's score
            res = evaluate(trainer.model, evals, k=k, temperature=T, num_samples_to_keep=n_all,
                           **trainer.parts.eval_kwargs(cfg))
        dep = trainer_thought_dependence(trainer, evals)
        r = row(label, task.name, res, train_s, str(init.name), run_dir, dep)
        console.print(f"{label}: Pass@1 {percent_se(res.pass_at_1, res.n)}%, {res.mean_reasoning_positions:.1f} "
                      f"reasoning positions" + (f", swap drop {points_se(dep.drop_swap, dep.drop_swap_se)}"
                                                if dep else ""))
        return r

    rows.append(score(f"latent init ({init.name})", 0.0))
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    rows.append(score(f"{LATENT_DEMO_METHOD}, {steps} steps", train_s))
    wall = time.perf_counter() - t_start

    n = cot_res.n
    table = Table(title=f"latentrl demo --latent: {task.name}, the same {n} held-out problems in every row "
                        f"(% ± one standard error)")
    for col in ("", "Pass@1", f"Pass@{k} (T={T:g})", "positions", "swap drop", "zero drop", "train s"):
        table.add_column(col, justify="right")
    for label, r in zip(("CoT SFT", "latent init", f"{LATENT_DEMO_METHOD} {steps} st."), rows):
        dep = r["thought_dependence"]
        table.add_row(label, percent_se(r["pass_at_1"], r["n_eval"]),
                      percent_se(r["pass_at_k"], r["n_eval"]) if r["pass_at_k"] is not None else "—",
                      f"{r['mean_reasoning_positions']:.1f}",
                      points_se(dep['drop_swap'], dep['drop_swap_se']) if dep else "—",
                      points_se(dep['drop_zero'], dep['drop_zero_se']) if dep else "—",
                      f"{r['train_wall_s']:.0f}")
    console.print(table)
    paired = {"latent_init_minus_cot": paired_difference(rows[1], rows[0]),
              "rl_minus_latent_init": paired_difference(rows[2], rows[1])}
    console.print(f"rows: {', '.join(r['method'] for r in rows)}; positions = latent + token positions before "
                  f"`####`; swap / zero drop = Pass@1 points lost when each problem's thoughts are replaced by "
                  f"another problem's / by zeros\n"
                  f"paired Pass@1 differences on the same problems: latent init - CoT "
                  f"{_pts(paired['latent_init_minus_cot'])}, after RL - latent init "
                  f"{_pts(paired['rl_minus_latent_init'])}")
    png = plot_metrics(run_dir / "metrics.jsonl", run_dir / "curves.png",
                       ["eval/pass_at_1", "reward", "frac_reward_zero_std", "completions/mean_length", "entropy",
                        "grad_norm"], title=f"{LATENT_DEMO_METHOD} on {task.name} from {init.name}", missing="skip")
    acc_png = run_dir / "accuracy_vs_length.png"
    plot_accuracy_vs_length(rows, acc_png)
    console.print(f"curves: {png}\naccuracy vs reasoning positions: {acc_png}\n"
                  f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}\nwall time: {wall:.0f} s")
    summary = {"mode": "latent", "task": task.name, "task_label": LATENT_DEMO_TASK_LABELS.get(task.name, task.name),
               "method": LATENT_DEMO_METHOD, "steps": steps, "seed": seed, "k": k, "pass_at_k_temperature": T,
               "init": str(init), "cot_model": str(cot),
               "rows": [{kk: v for kk, v in r.items() if kk != "samples"} for r in rows], "paired_pass_at_1": paired,
               "samples": {r["method"]: r["samples"][:3] for r in rows},
               "train_wall_s": train_s, "wall_s": wall, "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "demo_results.json", summary)
    return summary


def _wide_console():
    """A rich console at least 104 columns wide: the demo's tables, unwrapped in logs and narrow terminals."""
    from rich.console import Console

    return Console(width=max(Console().width, 104))


def paired_difference(a: dict, b: dict) -> dict:
    """Greedy Pass@1 of row `a` minus row `b` over the same problems (both rows keep every problem's score in
    `samples`), with the paired standard error of the mean difference."""
    from latentrl.eval import mean_se

    xa, xb = [float(x["correct"] > 0) for x in a["samples"]], [float(x["correct"] > 0) for x in b["samples"]]
    if len(xa) != len(xb) or [x["prompt"] for x in a["samples"]] != [x["prompt"] for x in b["samples"]]:
        raise ValueError("paired difference needs both rows scored on the same problems, every score kept")
    d = [p - q for p, q in zip(xa, xb)]
    return {"diff": sum(d) / len(d), "se": mean_se(d), "n": len(d)}


def _pts(p: dict) -> str:
    return f"{100 * p['diff']:+.1f} ± {100 * p['se']:.1f} points (n={p['n']})"
