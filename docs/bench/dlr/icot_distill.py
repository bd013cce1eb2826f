"""Can DLR's assistant write the thoughts of the icot 4x4 latent init? Distillation alone, with a longer budget.

    OMP_NUM_THREADS=2 PYTHONPATH=src python docs/bench/dlr/icot_distill.py --out OUT [--steps 15000] [--num-train 50000]

`latentrl bench --methods dlr --tasks icot_mult_4x4` scores 0 %: its assistant, distilled for the preset's 1,500
steps on 8,000 problems, ends at a relative MSE of 0.21 (chain_sum: 0.012) and no sampled chain is ever rewarded,
so DLR has nothing to learn from. This script isolates the distillation (`distill_loss`, as
`latentrl.methods.dlr.chain.distill_assistant` runs it: AdamW, one-cycle, clip 1, noisy fed-back thoughts) and
measures, every --eval-every steps, the frozen `icot_mult_4x4-coconut` main model's greedy Pass@1 on the first
--num-val problems of the real valid file when it reads the assistant's mean chain instead of its own thoughts.
Training problems are generated (icot_mult, 4 digits) and checked disjoint from the valid file.
Everything printed is also written to <out>/log.jsonl; the result is <out>/result.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chain_sum_dlr import Encoded, accuracy, chains_of, se  # noqa: E402  (the chain_sum script's helpers)

from latentrl.assets import (
    model_path,  # noqa: E402
    recorded_num_thoughts,  # noqa: E402
)
from latentrl.bench import check_disjoint, suite_tasks  # noqa: E402
from latentrl.data import load_examples  # noqa: E402
from latentrl.data.schema import as_rows  # noqa: E402
from latentrl.methods.dlr.chain import ChainAssistant, CoconutFrame, distill_loss  # noqa: E402
from latentrl.model import LatentModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-train", type=int, default=50000)
    ap.add_argument("--num-val", type=int, default=500)
    ap.add_argument("--steps", type=int, default=15000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=1500)
    ns = ap.parse_args()
    torch.manual_seed(ns.seed)
    t0 = time.perf_counter()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=False)  # never overwrite an earlier run
    log = open(out / "log.jsonl", "w")

    def emit(rec: dict) -> None:
        rec = {"t": round(time.perf_counter() - t0, 1), **rec}
        print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()

    task = suite_tasks()["icot_mult_4x4"]
    model = LatentModel.from_pretrained(str(model_path("icot_mult_4x4-coconut")))
    model.model.requires_grad_(False)
    model.eval()
    num_thoughts = recorded_num_thoughts("icot_mult_4x4-coconut") or 14
    frame = CoconutFrame(model, num_thoughts=num_thoughts, max_new_positions=24)
    train = load_examples(task.dataset, split="train", n=ns.num_train, seed=ns.seed, **task.dataset_kwargs)
    val = task.eval_examples(ns.num_val)
    check_disjoint(task, train, val)
    tr, va = Encoded(frame, as_rows(train)), Encoded(frame, as_rows(val))
    scale = float(tr.thoughts.pow(2).mean().sqrt())
    emit({"phase": "data", "train": len(train), "val": len(val), "thought_rms": scale,
          "main_own_train": float(tr.own_ok.mean()), "main_own_val": float(va.own_ok.mean())})
    asst = ChainAssistant(model.hidden_size, num_thoughts, width=ns.width, layers=ns.layers,
                          max_prompt=tr.ids.shape[1], init_std=0.1, thought_scale=scale)
    emit({"assistant_params": asst.num_parameters(), "main_params": sum(p.numel() for p in model.model.parameters())})

    gen = torch.Generator().manual_seed(ns.seed)
    opt = torch.optim.AdamW([p for n, p in asst.named_parameters() if n != "log_std"], lr=ns.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, ns.lr, total_steps=ns.steps, pct_start=0.05)
    curve, window = [], []
    asst.train()
    for step in range(1, ns.steps + 1):
        idx = torch.randint(0, len(tr.rows), (ns.batch,), generator=gen)
        loss = distill_loss(asst, tr.states[idx], tr.mask[idx], tr.thoughts[idx], ns.noise, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(asst.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(loss.item())
        if step % ns.eval_every == 0 or step == ns.steps:
            ok = accuracy(frame, va, chains_of(asst, va))
            asst.train()
            rec = {"step": step, "mse_mean": sum(window) / len(window), "val_pass_at_1": float(ok.mean()),
                   "val_se": se(float(ok.mean()), len(ok))}
            window = []
            curve.append(rec)
            emit({"phase": "distill", **rec})
    result = {"command": " ".join(sys.argv), "args": vars(ns), "thought_rms": scale,
              "main_own_val": float(va.own_ok.mean()), "curve": curve, "wall_s": round(time.perf_counter() - t0, 1)}
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
