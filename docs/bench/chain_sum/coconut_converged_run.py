"""Coconut curriculum on chain_sum from a given CoT checkpoint, greedy Pass@1 per stage (issue #4).

Usage (from the repository root, PYTHONPATH=src):
    python docs/bench/chain_sum/coconut_converged_run.py MODEL OUT_JSON [CoconutConfig key=value ...]

Starts from configs/cpu/coconut_sft.yaml plus the chain_sum bench overrides (max_latent_stage=7, batch 64), then
the given overrides. Set CC_SAVE=DIR to also save the final model (for inspection). Training data: `load_examples("chain_sum", "train", n=2000, seed=0)` (as the bench's Coconut
init); evaluation: the chain-sum branch's suite eval set (draws of seed 271828 that skip every question of
configs/pretrain_chain_sum.yaml's 80,000 training questions), first `num_eval_examples` problems. Stage 0 is the
CoT model itself, scored with plain `evaluate` (60 positions), like the bench's cot_sft baseline row.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from latentrl.config import config_to_dict, load_config
from latentrl.data import load_examples, train_eval_split
from latentrl.eval import evaluate
from latentrl.model import LatentModel
from latentrl.pretrain import PretrainConfig
from latentrl.sft.coconut import CoconutConfig, train_coconut

EVAL_SEED = 271828  # CHAIN_SUM_EVAL_SEED of the chain-sum branch's bench
KNOBS = {"length": 8, "modulus": 10, "ops": "+"}


def eval_set(n: int) -> list:
    pc = load_config(PretrainConfig, "configs/pretrain_chain_sum.yaml")
    pre_train, _ = train_eval_split(pc.task, pc.num_train_examples, pc.num_eval_examples, pc.seed, **pc.difficulty)
    held_out, _ = train_eval_split("chain_sum", n, 0, EVAL_SEED, exclude={ex.question for ex in pre_train}, **KNOBS)
    return held_out


def main() -> None:
    model_path, out_json, *overrides = sys.argv[1:]
    base = ["max_latent_stage=7", "per_device_train_batch_size=64", "disable_tqdm=true", "eval_batch_size=250",
            "num_eval_examples=500"]
    cfg = load_config(CoconutConfig, "configs/cpu/coconut_sft.yaml", [*base, *overrides])
    evals = eval_set(cfg.num_eval_examples)
    train = load_examples("chain_sum", split="train", n=cfg.num_train_examples, seed=cfg.seed, **KNOBS)
    shared = {ex.question for ex in train} & {ex.question for ex in evals}
    assert not shared, f"{len(shared)} eval questions are training questions"
    model = LatentModel.from_pretrained(model_path, add_latent_tokens=True)
    t0 = time.perf_counter()
    cot = evaluate(model, evals, max_new_positions=60, batch_size=250)
    stage0 = {"stage": 0, "pass_at_1": cot.pass_at_1, "mean_reasoning_positions": cot.mean_reasoning_positions,
              "wall_s": time.perf_counter() - t0}
    print("stage 0 (CoT):", stage0, flush=True)
    history = train_coconut(cfg, model, train, evals)
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps({
        "model": model_path, "config": config_to_dict(cfg), "num_eval": len(evals), "eval_seed": EVAL_SEED,
        "stage0_cot": stage0, "eval": history.eval, "stages": history.stages, "steps": history.steps,
        "train_wall_s": history.train_wall_s, "wall_s": history.wall_s, "train_last": history.train[-1:],
        "final_samples": (history.final_eval or {}).get("samples", []),
    }, indent=1))
    if os.environ.get("CC_SAVE"):  # checkpoint for inspection; not committed
        model.save_pretrained(os.environ["CC_SAVE"])
    for ev in history.eval:
        print(ev, flush=True)


if __name__ == "__main__":
    main()
