"""GRPO on Coconut latents (coconut_grpo, the library's GRPOTrainer) at the FLOPs of a DLR run (issue 19).

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/dlr/grpo_equal_flops.py --seed 0 \
        --dlr-run docs/bench/dlr/run_lr1e-4_seed0 --out docs/bench/dlr/grpo_flops_seed0

Starts from the same shipped latent init `chain_sum-coconut` as chain_sum_dlr.py, with the preset
configs/cpu/coconut_grpo.yaml and the chain_sum task's `method_overrides` (7 thoughts), as `latentrl demo --latent`
and `latentrl bench` configure it; same data as chain_sum_dlr.py for the seed (train = 8000 generated problems,
validation = 500 eval-split problems, test = the suite's 1000 held-out problems; `check_disjoint`).

Budget: B_fwd = the DLR run's phase-2 FLOPs as chain_sum_dlr.py counted them (main_forward_flops +
assistant_flops; forward passes only). GRPO steps run until the cumulative `compute/total_flops` (the trainer's
counter: rollout + replay + update forward, + update backward as 2 forward-equivalents) reaches B_fwd, then go on to
2 B_fwd (a bound for DLR's uncounted backward passes). The validation split is scored every --eval-every steps and
at each budget's last step; its FLOPs are logged separately (`val_flops`, same formula). The test problems are
scored only at the end, for the checkpoints kept at each budget (last step, best validation so far), never used for
selection. Also: the thought-swap check (`trainer_thought_dependence`) of each, and how far GRPO moved the main
model (its logits on 3 unrelated prompts, as chain_sum_dlr.py checks for DLR).
Writes <out>/log.jsonl (one line per step) and <out>/result.json. Results: docs/bench/dlr/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from chain_sum_dlr import paired, se  # the DLR script's helpers (same folder)

import latentrl.eval as lr_eval
from latentrl.assets import model_path
from latentrl.bench import check_disjoint, preset_path, suite_tasks
from latentrl.compute import forward_flops
from latentrl.config import GRPOConfig, load_config
from latentrl.data import load_examples
from latentrl.data.schema import as_rows
from latentrl.methods import get_method
from latentrl.model import LatentModel
from latentrl.thought_dependence import trainer_thought_dependence

METHOD = "coconut_grpo"


class EvalCounter:
    """Counts the main-model positions of `latentrl.eval.evaluate`'s rollouts with the trainer's formula (the
    padded prefill + one position per decoding step but the last)."""

    def __init__(self):
        self.tokens = 0
        self._orig = lr_eval.generate_rollout

        def counted(model, ids, mask, *a, **k):
            ro = self._orig(model, ids, mask, *a, **k)
            self.tokens += ro.batch_size * (ids.shape[1] + max(ro.completion_ids.shape[1] - 1, 0))
            return ro

        lr_eval.generate_rollout = counted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dlr-run", required=True, help="the DLR run (chain_sum_dlr.py --out) whose FLOPs are B_fwd")
    ap.add_argument("--num-train", type=int, default=8000)
    ap.add_argument("--num-val", type=int, default=500)
    ap.add_argument("--num-test", type=int, default=1000)
    ap.add_argument("--budget-mult", type=float, nargs="+", default=[1.0, 2.0], help="budgets, in units of B_fwd")
    ap.add_argument("--eval-every", type=int, default=50, help="validation every this many steps")
    ap.add_argument("--max-steps", type=int, default=0, help=">0: stop after this many steps (timing runs)")
    ap.add_argument("--override", nargs="*", default=[], help="key=value overrides of the preset (reported)")
    ns = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "w")

    def emit(rec: dict, echo: bool = True) -> None:
        rec = {"t": round(time.perf_counter() - t_start, 1), **rec}
        if echo:
            print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()

    dlr = json.loads((Path(ns.dlr_run) / "result.json").read_text())
    assert dlr["args"]["seed"] == ns.seed, f"DLR run {ns.dlr_run} is seed {dlr['args']['seed']}, not {ns.seed}"
    b_fwd = float(dlr["dlr_compute"]["main_forward_flops"] + dlr["dlr_compute"]["assistant_flops"])
    budgets = [m * b_fwd for m in ns.budget_mult]

    task = suite_tasks()["chain_sum"]
    init = model_path(task.shipped_inits["coconut_sft"])
    cfg = load_config(GRPOConfig, preset_path(METHOD), [
        f"model_name_or_path={init}", f"output_dir={out / 'unused'}", "max_steps=1000000", f"seed={ns.seed}",
        f"method={METHOD}", f"max_completion_length={task.max_completion_length}", "save_steps=0",
        "dataset=" + task.dataset, f"num_train_examples={ns.num_train}", *task.method_overrides.get(METHOD, ()),
        *ns.override,
    ])
    lm = LatentModel.from_pretrained(init, add_latent_tokens=True)
    tok = lm.tokenizer
    unrelated = ["9 9 9 9 ||", "<< 1 + 2 = 3 >> << 3 + 4 = 7 >> #### 7", "0 1 2 3 4 5 6 7 8 9"]

    @torch.no_grad()
    def unrelated_logits():
        lm.model.eval()
        return [lm.model(torch.tensor([tok(u, add_special_tokens=False)["input_ids"]])).logits.clone()
                for u in unrelated]

    logits0 = unrelated_logits()

    train = load_examples(task.dataset, split="train", n=ns.num_train, seed=ns.seed, **task.dataset_kwargs)
    val = load_examples(task.dataset, split="eval", n=ns.num_val, seed=ns.seed, **task.dataset_kwargs)
    test = task.eval_examples(ns.num_test)
    check_disjoint(task, train, test)
    check_disjoint(task, val, test)
    val_rows, test_rows = as_rows(val), as_rows(test)

    trainer = get_method(METHOD).trainer_class(cfg, lm, train)
    counter = EvalCounter()

    def score(rows) -> torch.Tensor:
        with trainer.gathered(trainer.model):
            res = lr_eval.evaluate(trainer.model, rows, **trainer.parts.eval_kwargs(trainer.args))
        return torch.tensor(res.correct)

    def state() -> dict:
        return copy.deepcopy({k: v.detach().clone() for k, v in trainer.model.model.state_dict().items()})

    init_state = state()
    counter.tokens = 0
    v0 = float(score(val_rows).mean())
    val_flops0 = forward_flops(trainer.main_params, counter.tokens)
    emit({"phase": "setup", "b_fwd": b_fwd, "budgets": budgets, "main_matmul_params": trainer.main_params,
          "train": len(train), "val": len(val), "test": len(test), "prompts_per_step": trainer.prompts_per_step,
          "G": trainer.G, "lr": cfg.learning_rate, "temperature": cfg.temperature, "step": 0, "val_acc": v0,
          "val_flops_step0": val_flops0})
    counter.tokens = 0

    cum = {"total": 0.0, "fwd": 0.0, "bwd": 0.0, "tokens": 0.0}
    best = {"acc": v0, "step": 0, "state": init_state, "total_flops": 0.0}
    kept: dict[str, dict] = {}  # per budget: last + best-val states
    bi = 0
    curve = []
    step = 0
    while bi < len(budgets):
        m = trainer.train_step()
        step = trainer.global_step
        cum["total"] += m["compute/total_flops"]
        cum["fwd"] += m["compute/main_flops"]
        cum["bwd"] += m["compute/main_backward_flops"]
        cum["tokens"] += m["compute/main_tokens"]
        rec = {"step": step, "reward": m["reward"], "correctness": m.get("rewards/correctness_reward/mean",
               m.get("rewards/correctness/mean")), "format": m.get("rewards/format_reward/mean",
               m.get("rewards/format/mean")), "frac_reward_zero_std": m["frac_reward_zero_std"],
               "loss": m["loss"], "grad_norm": m["grad_norm"], "step_total_flops": m["compute/total_flops"],
               "cum_total_flops": cum["total"], "cum_forward_flops": cum["fwd"], "cum_backward_flops": cum["bwd"],
               "cum_val_flops": forward_flops(trainer.main_params, counter.tokens),
               "mean_len": m["completions/mean_length"], "step_s": m["time/step_s"]}
        crossed = cum["total"] >= budgets[bi]
        stop = ns.max_steps and step >= ns.max_steps
        if step % ns.eval_every == 0 or crossed or stop:
            acc = float(score(val_rows).mean())
            rec["val_acc"] = acc
            rec["cum_val_flops"] = forward_flops(trainer.main_params, counter.tokens)
            if acc > best["acc"]:
                best = {"acc": acc, "step": step, "state": state(), "total_flops": cum["total"]}
        curve.append(rec)
        emit(rec, echo="val_acc" in rec or step % 10 == 0)
        while bi < len(budgets) and cum["total"] >= budgets[bi]:
            kept[f"{ns.budget_mult[bi]:g}xB"] = {
                "budget_flops": budgets[bi], "step": step, "cum_total_flops": cum["total"],
                "cum_forward_flops": cum["fwd"], "cum_backward_flops": cum["bwd"], "cum_main_tokens": cum["tokens"],
                "cum_val_flops": forward_flops(trainer.main_params, counter.tokens), "wall_s": time.perf_counter() - t_start,
                "main_unrelated_logits_max_abs_diff": max(float((a - b).abs().max())
                                                          for a, b in zip(logits0, unrelated_logits())),
                "last_state": state(), "best_val": {k: v for k, v in best.items() if k != "state"},
                "best_state": best["state"]}
            emit({"budget_reached": f"{ns.budget_mult[bi]:g}xB", "step": step, "cum_total_flops": cum["total"]})
            bi += 1
        if stop:
            emit({"stopped": "max_steps", "step": step})
            break
    t_train = time.perf_counter() - t_start

    logits1 = unrelated_logits()
    res: dict = {"args": vars(ns), "method": METHOD, "init": str(init), "config": {
        k: getattr(cfg, k) for k in ("learning_rate", "weight_decay", "lr_scheduler_type", "max_grad_norm",
                                     "per_device_train_batch_size", "num_generations", "temperature",
                                     "max_completion_length", "beta", "epsilon", "num_iterations", "loss_type",
                                     "scale_rewards", "reward_funcs")},
        "num_latent_steps": cfg.latent.num_latent_steps, "dlr_run": ns.dlr_run, "dlr_compute": dlr["dlr_compute"],
        "b_fwd": b_fwd, "main_matmul_params": trainer.main_params, "steps": step, "train_wall_s": round(t_train, 1),
        "val_acc_step0": v0,
        "main_unrelated_logits_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(logits0, logits1))}

    # ---- test: paired, same 1000 problems, the init (own thoughts) and each kept checkpoint
    n = len(test_rows)
    trainer.model.model.load_state_dict(init_state)
    own = score(test_rows)
    res["test_main_own"] = {"acc": float(own.mean()), "se": se(float(own.mean()), n), "n": n}
    dep = trainer_thought_dependence(trainer, test_rows)
    res["swap_main_own"] = dep.to_dict() if dep else None
    bits = lambda ok: "".join(str(int(x)) for x in ok.tolist())  # noqa: E731  per-problem 0/1, test order
    res["test_main_own"]["correct"] = bits(own)
    for name, k in kept.items():
        for var in ("last", "best"):
            trainer.model.model.load_state_dict(k[f"{var}_state"])
            ok = score(test_rows)
            dep = trainer_thought_dependence(trainer, test_rows)
            k[f"test_{var}"] = {"acc": float(ok.mean()), "se": se(float(ok.mean()), n), "n": n,
                                "minus_main_own": paired(ok, own), "swap": dep.to_dict() if dep else None,
                                "correct": bits(ok)}
        res[name] = {kk: v for kk, v in k.items() if not kk.endswith("_state")}
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    (out / "result.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "args"}, indent=1, default=str))


if __name__ == "__main__":
    main()
