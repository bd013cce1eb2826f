"""Update-path cost of the replay's logits chunk size at a real vocabulary: replay with gradients + backward of one
batch of completions, for several `logits_chunk_size` values side by side, with wall, user and system CPU time and
the ratio to the old fixed 1024-position chunk.

    python benchmarks/replay_chunks.py                      # V = 151,936, 8 x 128 completion positions
    python benchmarks/replay_chunks.py --vocab-size 64 --chunks 1024 256

Why: at V = 151,936 a 1024-position chunk allocates 622 MB per float32 temporary (freshly mapped and page-faulted
each time), and the update step shows about as much system time as user time. Smaller chunks were tried as the fix:
128- and 256-position chunks did not help (still above glibc's 32 MB mmap ceiling); 48 positions (29 MB) did, so
replay's CPU default is now sized under that ceiling (`latentrl.replay.default_logits_chunk`).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from latentrl.replay import default_logits_chunk, replay
from latentrl.rollout import SamplingParams, generate_rollout
from latentrl.testing import tiny_latent_model


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-size", type=int, default=151936)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--completion-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--chunks", type=int, nargs="+", default=None,
                   help="chunk sizes to compare (default: 1024 (the old fixed size), 256, 128, 48, and replay's "
                        "CPU default for this vocabulary)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per chunk size; the minimum is reported")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = tiny_latent_model("qwen2", [f"w{i}" for i in range(max(0, a.vocab_size - 40))], seed=0, hidden=a.hidden)
    chunks = a.chunks or list(dict.fromkeys([1024, 256, 128, 48, default_logits_chunk(lm.vocab_size)]))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, lm.vocab_size, (a.batch, a.prompt_len), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        ro = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=a.completion_len, stop_token_ids=[-1]),
                              None, None, g)
    rows = {}
    for chunk in chunks:
        best = None
        for _ in range(a.repeats):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            replay(lm, None, ro, temperature=1.0, logits_chunk_size=chunk).logprobs.sum().backward()
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            lm.zero_grad(set_to_none=True)
            run = {"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime}
            best = run if best is None or wall < best["wall_s"] else best
        rows[chunk] = best
    base = rows.get(1024)
    print(f"replay + backward, V={lm.vocab_size}, {a.batch} x {a.completion_len} completion positions, "
          f"{a.threads} thread(s)")
    print(f"{'chunk':>6} {'wall s':>8} {'user s':>8} {'sys s':>8} {'vs 1024':>8}")
    for chunk, r in rows.items():
        ratio = f"{base['wall_s'] / r['wall_s']:.2f}x" if base else "-"
        print(f"{chunk:>6} {r['wall_s']:>8.2f} {r['user_s']:>8.2f} {r['sys_s']:>8.2f} {ratio:>8}")
    out = {"vocab_size": lm.vocab_size, "runs": {str(k): v for k, v in rows.items()}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
