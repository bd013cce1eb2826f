"""SFT losses at a real vocabulary: the LM head run a chunk of positions at a time on the hidden states
(`sft.cot.masked_lm_loss_from_hidden`, what CoT SFT, Coconut and superposition SFT train with since 2026-12-07) vs
the full (B, T, V) logits and a cross-entropy over every position (what CoT SFT did before, as HF's and TRL's SFT
do), side by side: seconds per step, user and system CPU time and the peak resident memory, each shape and path in a
fresh process.

    python benchmarks/sft_memory.py                          # V = 151,936; 8 x 128 and 8 x 256 tokens
    python benchmarks/sft_memory.py --vocab-size 64 --shapes 8x128

A step is one CoT SFT loss forward + backward on a random-weight 2-layer Qwen2 (`--hidden` wide) over BATCH rows of
SEQ tokens, the last `--target-frac` of each row labelled (a CoT + answer after its prompt); one warm-up step, then
the fastest of `--repeats`; peak = the resident high-water mark over the timed steps (reset after the warm-up).
Both paths give the same loss and gradients (tests/test_sft_cot.py); this measures what they cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_process import compare_paths, fastest  # noqa: E402

PATHS = ("chunked", "logits")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-size", type=int, default=151936)
    p.add_argument("--shapes", nargs="+", default=["8x128", "8x256"], help="BATCHxSEQ shapes (default 8x128 8x256)")
    p.add_argument("--target-frac", type=float, default=0.75, help="labelled share of each row (default 0.75)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="timed steps per path and shape; the fastest is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", nargs=3, metavar=("PATH", "BATCH", "SEQ"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(a: argparse.Namespace) -> dict:
    """One path at one shape, in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    from latentrl.sft.cot import masked_lm_loss_from_hidden
    from latentrl.testing import tiny_latent_model

    path, batch, seq = a.worker[0], int(a.worker[1]), int(a.worker[2])
    torch.set_num_threads(a.threads)
    lm = tiny_latent_model("qwen2", [f"w{i}" for i in range(max(0, a.vocab_size - 40))], seed=0, hidden=a.hidden)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, lm.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, : seq - int(seq * a.target_frac)] = -100
    lm.model.train()

    def step() -> float:
        if path == "logits":  # what CoT SFT did before 2026-12-07: HF's logits, CE over every position
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            n = (labels[:, 1:] != -100).sum()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum") / n
            with torch.no_grad():  # its token-accuracy stat: an argmax over every position's logits
                (logits.argmax(-1) == labels[:, 1:]).sum()
        else:
            _, hidden, _ = lm.forward_embeds(lm.embed(ids), attention_mask=mask, compute_logits=False)
            loss, _ = masked_lm_loss_from_hidden(lm.output_head, hidden, labels)
        loss.backward()
        lm.zero_grad(set_to_none=True)
        return float(loss)

    losses: list[float] = []
    timed = fastest(lambda: losses.append(step()), a.repeats)
    return {"path": path, "batch": batch, "seq": seq, "loss": losses[0], **timed}


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return {}
    base = [f"--vocab-size={a.vocab_size}", f"--target-frac={a.target_frac}", f"--hidden={a.hidden}",
            f"--repeats={a.repeats}", f"--threads={a.threads}"]
    print(f"CoT SFT loss + backward, V={a.vocab_size}, {a.threads} thread(s); each row a fresh process; "
          "ratios: logits / chunked")
    rows = compare_paths(__file__, base, a.shapes, PATHS, baseline="logits", extra=("loss",))
    out = {"vocab_size": a.vocab_size, "threads": a.threads, "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
