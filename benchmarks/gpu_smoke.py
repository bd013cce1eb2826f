"""One training step of every registered method on a tiny random Qwen2, on a CUDA device by default.

The first thing to run on a GPU (the first one, an H100 on 2026-12-05, found rewards left on the CPU).
For each method of `latentrl.methods.METHODS` it builds the method's CPU preset (configs/cpu/<method>.yaml) shrunk
to a tiny model and batch, then

Then the same for each of `VARIANTS` (a method with settings its preset does not use: Latent-GRPO's exact
likelihood). For each method:

1. draws one batch of rollouts and replays it: the replayed log-probs must equal the rollout's own (max abs
   difference <= --tol at policy positions), i.e. sampling, operators and replay agree on the device;
2. runs one optimizer step (`trainer.train()` with max_steps=1) and checks the loss is finite and that every
   parameter and side module stayed on the device.

Then a few optimizer steps of each SFT trainer (CoT, the Coconut curriculum over two latent stages, superposition
SFT with self_feed) and the thought-swap check (`--sft`; 'none' skips them): finite losses, weights on the device.

Every random draw then runs on the device with a device generator (a CPU generator meeting CUDA tensors raises),
so a pass also means the sampling path is device-clean. Prints one line per method and, last, one JSON object.

    python benchmarks/gpu_smoke.py                      # CUDA (fails fast when none is visible)
    python benchmarks/gpu_smoke.py --device cpu         # the same on the CPU (what tests/test_gpu_smoke.py runs)
    python benchmarks/gpu_smoke.py --methods hrpo,lepo --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SFT_STAGES = ("sft_cot", "sft_coconut", "sft_superposition", "thought_dependence")  # run after the methods
#: settings of a method whose code paths its preset does not take, smoked as "<method>:<name>" after the methods
VARIANTS = {"latent_grpo:likelihood": ("latent_grpo", {"latent": {"gumbel_logprob": "likelihood", "noise_scale": 0.1}})}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="One training step of every latentrl method on a tiny Qwen2 (CUDA smoke).")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu; cuda fails when no GPU is visible")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of the registered methods and of " + ",".join(VARIANTS)
                        + " (default: all of them)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="accelerate autocast (default no)")
    p.add_argument("--sft", default=",".join(SFT_STAGES),
                   help=f"comma-separated SFT / eval stages to run after the methods (default: all of "
                        f"{','.join(SFT_STAGES)}); 'none' skips them")
    p.add_argument("--tol", type=float, default=None,
                   help="max |replay - rollout| log-prob difference (default 1e-3 in float32: room for CUDA kernels that "
                        "differ between a one-position decode and a whole-sequence replay; 5e-2 under bf16/fp16)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tol is None:
        args.tol = 1e-3 if args.mixed_precision == "no" else 5e-2
    return args


def smoke_config(method: str, out: Path, seed: int, mixed_precision: str):
    """The method's CPU preset, shrunk: 2 prompts x 2 generations, 10 positions, one step, nothing saved; a
    `VARIANTS` name adds its settings."""
    from latentrl.config import GRPOConfig, load_config

    method, variant = VARIANTS.get(method, (method, {}))
    kw = dict(output_dir=str(out), model_name_or_path="tiny", max_steps=1, save_steps=0, report_to=["none"],
              per_device_train_batch_size=4, gradient_accumulation_steps=1, num_generations=2,
              max_completion_length=10, learning_rate=1e-3, reward_weights=None, dynamic_sampling=False, seed=seed,
              mixed_precision=mixed_precision, log_to_console=False)
    if method == "latent_grpo":  # a random model never ends its completion nor writes '####': keep and cap them
        kw["latent_grpo"] = {"invalid_sample_masking": False}
        kw["latent"] = {"max_latent_steps": 4}
    if method == "dlr_prefix":
        kw["dlr"] = {"num_latent_steps": 3, "latent_dim": 4, "assistant_hidden_size": 16}
    if method == "dlr":
        kw["dlr"] = {"num_latent_steps": 3, "assistant_hidden_size": 16, "assistant_heads": 2, "assistant_ffn": 32,
                     "distill_steps": 2, "distill_examples": 4, "distill_batch_size": 4}
    cfg = load_config(GRPOConfig, ROOT / "configs" / "cpu" / f"{method}.yaml").to_dict()
    for k, v in [*kw.items(), *variant.items()]:
        cfg[k] = {**(cfg.get(k) or {}), **v} if isinstance(v, dict) else v
    return GRPOConfig(**cfg)


def smoke_one(method: str, args: argparse.Namespace, out: Path) -> dict:
    """Rollout + replay agreement, then one optimizer step, for one method; returns its figures."""
    import torch

    from latentrl.data import make_examples
    from latentrl.methods import get_method
    from latentrl.testing import char_sum_reward, tiny_chain_sum_model

    t0 = time.perf_counter()
    lm = tiny_chain_sum_model(seed=args.seed)
    trainer = get_method(VARIANTS.get(method, (method,))[0]).trainer_class(
        smoke_config(method, out, args.seed, args.mixed_precision), lm,
                                               make_examples("chain_sum", 8, seed=args.seed, length=3),
                                               reward_funcs=[char_sum_reward])
    device = trainer.model.device
    if device.type != torch.device(args.device).type:
        raise RuntimeError(f"{method}: the trainer put the model on {device}, expected {args.device}")
    batch = trainer.generate_and_score(trainer.rows[:2])
    diff = trainer.replay_gap(batch)  # each trainer's own replay = rollout check
    logs = trainer.train()
    losses = [float(r["loss"]) for r in logs if "loss" in r]
    devices = {str(p.device) for p in trainer.model.model.parameters()}
    devices |= {str(p.device) for p in trainer.model.side_modules.parameters()}
    off = sorted(devices - {str(device)})
    res = {
        "method": method, "device": str(device), "replay_max_abs_diff": diff, "loss": losses[-1] if losses else None,
        "positions": int(batch.rollout.completion_mask.sum()), "latent_positions": int(batch.rollout.num_latent.sum()),
        "seconds": round(time.perf_counter() - t0, 2), "params_off_device": off,
    }
    if device.type == "cuda":
        res["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    problems = []
    if diff > args.tol:
        problems.append(f"replayed log-probs differ from the rollout's by {diff:.2e} > {args.tol:g}")
    if not losses or not all(math.isfinite(x) for x in losses):
        problems.append(f"no finite loss logged: {losses}")
    if off:
        problems.append(f"parameters left the device: {off}")
    res["ok"] = not problems
    res["problems"] = problems
    return res


def smoke_sft(stage: str, args: argparse.Namespace, out: Path) -> dict:
    """A few steps of one SFT trainer (or the swap test) on a tiny Qwen2: finite losses, weights on the device."""
    import torch

    from latentrl.data import make_examples, task_vocabulary
    from latentrl.testing import tiny_latent_model

    t0 = time.perf_counter()
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=args.seed, hidden=32)
    data = make_examples("chain_sum", 8, seed=args.seed, length=2)
    common = dict(per_device_train_batch_size=4, learning_rate=1e-3, disable_tqdm=True, seed=args.seed,
                  output_dir=str(out),
                  mixed_precision="bf16" if args.mixed_precision == "bf16" else "no")  # SFT has no fp16 scaler
    res: dict = {"method": stage}
    if stage == "sft_cot":
        from latentrl.sft.cot import CoTSFTConfig, train_sft

        hist = train_sft(CoTSFTConfig(max_steps=3, eval_steps=0, logging_steps=1, **common), lm, data, data[:4])
    elif stage == "sft_coconut":
        from latentrl.sft.coconut.config import CoconutConfig
        from latentrl.sft.coconut.train import train_coconut

        hist = train_coconut(CoconutConfig(max_latent_stage=2, epochs_per_stage=1, num_epochs=3, logging_steps=1,
                                           **common), lm, data, data[:4])
    elif stage == "sft_superposition":
        from latentrl.sft.superposition import SuperpositionSFTConfig, train_superposition_sft

        hist = train_superposition_sft(SuperpositionSFTConfig(max_steps=3, top_k=5, self_feed=0.5, logging_steps=1,
                                                              **common), lm, data, data[:4])
    elif stage == "thought_dependence":
        from latentrl.rollout import ThinkingSchedule
        from latentrl.sft.superposition import deterministic_topk_operator
        from latentrl.thought_dependence import thought_dependence

        lm.to(torch.device(args.device))
        dep = thought_dependence(lm, data, operator=deterministic_topk_operator(5),
                                 schedule=ThinkingSchedule(num_latent_steps=3), max_new_positions=8, seed=args.seed)
        hist = None  # no training: only the three greedy passes must run
        losses, res["pass_at_1"] = [0.0], dep.pass_own
    else:
        raise ValueError(f"unknown SFT smoke stage {stage!r}; known: {SFT_STAGES}")
    if hist is not None:
        losses, res["pass_at_1"] = [r["loss"] for r in hist.train if "loss" in r], hist.final_eval["pass_at_1"]
    devices = {p.device.type for p in lm.parameters()}
    res.update(losses=losses, devices=sorted(devices), seconds=round(time.perf_counter() - t0, 2))
    problems = []
    if not losses or not all(math.isfinite(float(x)) for x in losses):
        problems.append(f"no finite loss logged: {losses}")
    if devices != {torch.device(args.device).type}:
        problems.append(f"weights on {sorted(devices)}, expected {args.device}")
    res["ok"], res["problems"] = not problems, problems
    return res


def guarded(smoke, name: str, args: argparse.Namespace, out: Path) -> dict:
    """`smoke(name, args, out)`'s result row, or a failed row naming the exception (its traceback on stderr):
    every stage is reported, then the script fails."""
    try:
        return smoke(name, args, out)
    except Exception as exc:
        traceback.print_exc(limit=-4)
        return {"method": name, "ok": False, "problems": [f"{type(exc).__name__}: {exc}"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # accelerate picks the GPU whenever one is visible
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: --device cuda but torch sees no GPU (use --device cpu for the CPU run)")
    from latentrl.methods import METHODS

    methods = ([*sorted(METHODS), *VARIANTS] if not args.methods
               else [m.strip() for m in args.methods.split(",") if m.strip()])
    unknown = [m for m in methods if m not in METHODS and m not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}, variants: {list(VARIANTS)}")
    stages = [] if args.sft.strip() == "none" else [x.strip() for x in args.sft.split(",") if x.strip()]
    if any(st not in SFT_STAGES for st in stages):
        raise SystemExit(f"unknown --sft stage(s) {[st for st in stages if st not in SFT_STAGES]}; known: {SFT_STAGES}")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        for m in methods:
            res = guarded(smoke_one, m, args, Path(tmp) / m)
            results.append(res)
            status = "ok " if res["ok"] else "FAIL"
            detail = "; ".join(res["problems"]) if not res["ok"] else (
                f"loss {res['loss']:.4g}  replay diff {res['replay_max_abs_diff']:.1e}  "
                f"{res['positions']} positions ({res['latent_positions']} latent)  {res['seconds']} s"
                + (f"  gpu peak {res['gpu_peak_mb']} MB" if "gpu_peak_mb" in res else ""))
            print(f"{status} {m:<22} {detail}", flush=True)
        for st in stages:
            res = guarded(smoke_sft, st, args, Path(tmp) / st)
            results.append(res)
            detail = "; ".join(res["problems"]) if not res["ok"] else (
                f"loss {res['losses'][-1]:.4g}  Pass@1 {res['pass_at_1']:.2f}  weights on {res['devices']}  "
                f"{res['seconds']} s")
            print(f"{'ok ' if res['ok'] else 'FAIL'} {st:<18} {detail}", flush=True)
    out = {"device": args.device, "torch": torch.__version__, "mixed_precision": args.mixed_precision,
           "all_ok": all(r["ok"] for r in results), "results": results}
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["all_ok"] else 1)
