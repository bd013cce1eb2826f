"""Paired test difference: the registered `dlr` method's bench run vs its frozen main model alone (issue 19).

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/dlr/registered/paired_vs_main.py \
        --runs OUT0/runs/dlr-chain_sum OUT1/runs/dlr-chain_sum ... --out docs/bench/dlr/registered/paired.json
        [--task icot_mult_4x4]

For each run written by `latentrl bench --methods dlr --tasks chain_sum --seed S --out OUTS`: loads its final
checkpoint, checks that the main model's weights are bit-identical to the shipped `chain_sum-coconut`, and scores the
suite's 1000 held-out chain_sum problems greedily twice on the same problems: the main model with its own thoughts,
and with the assistant's (mean) chain. Reports both Pass@1 ± SE and the paired difference ± paired SE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import torch

from latentrl.assets import model_path
from latentrl.bench import suite_tasks
from latentrl.config import GRPOConfig, load_config
from latentrl.data.schema import as_rows
from latentrl.methods import get_method
from latentrl.methods.dlr.chain import CoconutFrame
from latentrl.model import LatentModel


def weights_hash(model: LatentModel) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def acc(x: torch.Tensor) -> dict:
    p, n = float(x.float().mean()), x.numel()
    return {"acc": p, "se": math.sqrt(p * (1 - p) / n), "n": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-test", type=int, default=1000)
    ap.add_argument("--task", default="chain_sum", choices=("chain_sum", "icot_mult_4x4"),
                    help="the suite task; its shipped Coconut init is the frozen main model")
    ns = ap.parse_args()
    torch.set_num_threads(1)
    rows = as_rows(suite_tasks()[ns.task].eval_examples(ns.num_test))
    shipped = weights_hash(LatentModel.from_pretrained(str(model_path(f"{ns.task}-coconut"))))
    out = {}
    for run in map(Path, ns.runs):
        ckpt = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        cfg = load_config(GRPOConfig, run / "run_config.json")
        lm = LatentModel.from_pretrained(str(ckpt))
        lm.eval()
        parts = get_method("dlr").build(lm, cfg)
        asst = lm.side_modules["dlr_chain_assistant"]
        asst.eval()
        frame = CoconutFrame(lm, asst.num_steps, cfg.max_completion_length, prompt_text=parts.prompt_text)
        own_ok, dlr_ok = [], []
        with torch.no_grad():
            for s in range(0, len(rows), 500):
                part = rows[s : s + 500]
                ids, mask = frame.tokenize(part)
                _, ro_own = frame.own_thoughts(ids, mask)
                own_ok.append(frame.score(part, ro_own)[1])
                _, mu = asst.sample(frame.prompt_states(ids, mask), mask, deterministic=True)
                dlr_ok.append(frame.score(part, frame.decode(ids, mask, mu))[1])
        own, dlr = torch.cat(own_ok), torch.cat(dlr_ok)
        d = (dlr - own).float()
        rec = {"checkpoint": str(ckpt), "seed": cfg.seed, "main_weights_identical_to_shipped": weights_hash(lm) == shipped,
               "main_own_thoughts": acc(own), "dlr_chain": acc(dlr),
               "dlr_minus_own": {"diff": float(d.mean()), "se": float(d.std(unbiased=True) / math.sqrt(d.numel())),
                                 "dlr_only": int(((dlr > 0) & (own == 0)).sum()),
                                 "own_only": int(((own > 0) & (dlr == 0)).sum())}}
        print(json.dumps(rec), flush=True)
        out[str(run)] = rec
    Path(ns.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
