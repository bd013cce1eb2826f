"""Replay's update at a real vocabulary: the token log-probs in reused buffers (`latentrl.head_logprobs`) vs the
autograd path (checkpointed log-softmax per chunk), side by side: seconds, user and system CPU time, and the peak
resident memory of each path, each shape and path in a fresh process.

    python benchmarks/replay_memory.py                          # V = 151,936; 32 x 64 and 64 x 64 completions
    python benchmarks/replay_memory.py --vocab-size 64 --shapes 32x64

Why: written with autograd ops, every logits chunk (41 positions at V = 151,936, `replay.default_logits_chunk`)
allocates fresh (chunk x V) temporaries, and glibc does not reuse them: the small tensors each chunk leaves alive
split the freed blocks, so the process grows by about one chunk's logits per chunk, forward and backward (a
malloc_trim(0) after the loop gives it all back, so it is freed memory held by the allocator, not live tensors).
The buffer path writes every (chunk x V) intermediate into two buffers allocated once per call. An update is
`replay(..., compute_entropy=True)` (as the trainer calls it) with gradients, then backward of the summed
log-probs; one warm-up update, then the fastest of `--repeats`; peak = the resident high-water mark over the timed
updates (reset after the warm-up).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_process import compare_paths, fastest  # noqa: E402

PATHS = ("buffers", "autograd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-size", type=int, default=151936)
    p.add_argument("--shapes", nargs="+", default=["32x64", "64x64"], help="BATCHxCOMPLETION shapes (default 32x64 64x64)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="timed updates per path and shape; the fastest is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", nargs=3, metavar=("PATH", "BATCH", "COMPLETION"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(a: argparse.Namespace) -> dict:
    """One path at one shape, in this (fresh) process."""
    import torch

    import latentrl.replay as replay_module
    from latentrl.rollout import SamplingParams, generate_rollout
    from latentrl.testing import tiny_latent_model

    path, batch, completion = a.worker[0], int(a.worker[1]), int(a.worker[2])
    torch.set_num_threads(a.threads)
    if path == "autograd":  # the token scores take the autograd path where no fused weight is found
        import latentrl.head_logprobs as head_logprobs

        head_logprobs.fused_head_weight = replay_module.fused_head_weight = lambda head, h: None
    lm = tiny_latent_model("qwen2", [f"w{i}" for i in range(max(0, a.vocab_size - 40))], seed=0, hidden=a.hidden)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, lm.vocab_size, (batch, a.prompt_len), generator=g)
    with torch.no_grad():
        ro = generate_rollout(lm, ids, torch.ones_like(ids, dtype=torch.bool),
                              SamplingParams(max_new_positions=completion, stop_token_ids=[-1]), None, None, g)
    lm.model.train()

    def update() -> None:
        out = replay_module.replay(lm, None, ro, compute_entropy=True)
        (out.logprobs * ro.completion_mask).sum().backward()
        lm.zero_grad(set_to_none=True)

    return {"path": path, "batch": batch, "completion": completion, **fastest(update, a.repeats)}


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return {}
    base = [f"--vocab-size={a.vocab_size}", f"--prompt-len={a.prompt_len}", f"--hidden={a.hidden}",
            f"--repeats={a.repeats}", f"--threads={a.threads}"]
    print(f"replay (entropy on) + backward, V={a.vocab_size}, {a.threads} thread(s); each row a fresh process")
    rows = compare_paths(__file__, base, a.shapes, PATHS, baseline="autograd")
    out = {"vocab_size": a.vocab_size, "threads": a.threads, "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
