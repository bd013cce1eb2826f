"""Where a Coconut chain_sum model loses: mean cross-entropy and accuracy per target token (teacher forcing).

Usage (from the repository root, PYTHONPATH=src):
    python docs/bench/chain_sum/coconut_token_loss.py MODEL STAGE C_THOUGHT [N_EVAL]

Uses the same held-out eval problems as coconut_converged_run.py. Prints, for each target token index of the
stage's tail (the steps left in language, then ` #### d` and eos), the mean loss and accuracy, plus what kind of
token it is (`<<`, operand, `+`, running sum, ...), so one can see whether the errors sit on one token.
"""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from latentrl.config import load_config
from latentrl.model import LatentModel
from latentrl.sft.coconut import CoconutConfig, build_stage_sample, coconut_forward, collate_coconut, tokenize_example

sys.path.insert(0, "docs/bench/chain_sum")
from coconut_converged_run import eval_set  # noqa: E402


def main() -> None:
    model_path, stage, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 500
    cfg = load_config(CoconutConfig, "configs/cpu/coconut_sft.yaml", ["max_latent_stage=7", f"c_thought={c}"])
    model = LatentModel.from_pretrained(model_path, add_latent_tokens=True)
    model.eval()
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    samples = [build_stage_sample(tokenize_example(tok, ex), stage, cfg, model.latent_ids) for ex in eval_set(n)]
    batch = collate_coconut(samples, pad)
    with torch.no_grad():
        out = coconut_forward(model, batch, bptt=True, return_hidden=True)
        logits = model.lm_head(out.hidden[:, :-1]).float()
    target = batch.labels[:, 1:]
    sel = target != -100
    ce = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
    right = logits.argmax(-1) == target
    # every row's tail has the same length here (fixed-length task), so index k of the tail lines up across rows
    first = sel.float().argmax(1)
    length = int(sel.sum(1)[0])
    rows = []
    names = tok.convert_ids_to_tokens([int(t) for t in target[0, int(first[0]) : int(first[0]) + length]])
    for k in range(length):
        cols = first + k
        idx = torch.arange(target.shape[0])
        rows.append({"k": k, "token_of_row0": names[k], "loss": float(ce[idx, cols].mean()),
                     "acc": float(right[idx, cols].float().mean())})
    seq_loss = sum(r["loss"] for r in rows)
    print(json.dumps({"model": model_path, "stage": stage, "c_thought": c, "n": len(samples),
                      "sequence_loss_nats": seq_loss, "per_token": rows}, indent=1))


if __name__ == "__main__":
    main()
