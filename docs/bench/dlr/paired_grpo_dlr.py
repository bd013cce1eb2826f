"""Paired test differences GRPO − DLR on the same 1000 held-out chain_sum problems (issue 19).

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/dlr/paired_grpo_dlr.py --seeds 0 1 2 \
        --out docs/bench/dlr/grpo_vs_dlr_paired.json

For each seed: re-scores the DLR run's best-validation assistant (run_lr1e-4_seed<s>/assistant_best_val.pt, written
by chain_sum_dlr.py, not committed) on the test problems, checks its Pass@1 equals the one in that run's
result.json, and takes paired differences with the per-problem scores grpo_equal_flops.py wrote
(grpo_flops_seed<s>/result.json) at each budget (last and best-val checkpoints).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
from chain_sum_dlr import paired  # the DLR script's helpers (same folder)

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("chain_sum_dlr", HERE / "chain_sum_dlr.py")
dlr_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dlr_mod)

from latentrl.assets import model_path  # noqa: E402
from latentrl.bench import suite_tasks  # noqa: E402
from latentrl.data.schema import as_rows  # noqa: E402
from latentrl.methods.dlr.chain import ChainAssistant, CoconutFrame  # noqa: E402
from latentrl.model import LatentModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", required=True)
    ns = ap.parse_args()
    torch.set_num_threads(1)
    task = suite_tasks()["chain_sum"]
    model = LatentModel.from_pretrained(str(model_path("chain_sum-coconut")))
    model.model.requires_grad_(False)
    model.eval()
    frame = CoconutFrame(model, num_thoughts=7, max_new_positions=12)
    test = task.eval_examples(1000)
    te = dlr_mod.Encoded(frame, as_rows(test))
    out = {}
    for s in ns.seeds:
        run = HERE / f"run_lr1e-4_seed{s}"
        dres = json.loads((run / "result.json").read_text())
        a = dres["args"]
        asst = ChainAssistant(model.hidden_size, 7, width=a["width"], layers=a["layers"], max_prompt=te.ids.shape[1],
                              init_std=a["sigma"], thought_scale=dres["thought_rms"])
        asst.load_state_dict(torch.load(run / "assistant_best_val.pt"))
        dlr_ok = dlr_mod.accuracy(frame, te, dlr_mod.chains_of(asst, te))
        assert abs(float(dlr_ok.mean()) - dres["test_dlr_best_val"]["acc"]) < 1e-6, (float(dlr_ok.mean()), s)
        own_dlr = te.own_ok
        gres = json.loads((HERE / f"grpo_flops_seed{s}" / "result.json").read_text())
        own_g = torch.tensor([float(c) for c in gres["test_main_own"]["correct"]])
        rec = {"dlr_best_val_acc": float(dlr_ok.mean()), "dlr_best_val_step": dres["best_val"]["step"],
               "own_thoughts_agree": bool((own_g == own_dlr.float()).all())}
        for b in [k for k in gres if k.endswith("xB")]:
            for var in ("last", "best"):
                g = torch.tensor([float(c) for c in gres[b][f"test_{var}"]["correct"]])
                rec[f"grpo_{b}_{var}_minus_dlr_best_val"] = {"grpo_acc": float(g.mean()), **paired(g, dlr_ok)}
        out[f"seed{s}"] = rec
        print(s, json.dumps(rec), flush=True)
    Path(ns.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
