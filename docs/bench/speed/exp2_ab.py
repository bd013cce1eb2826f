"""exp2 for the full-vocabulary exponentials (issue 18): an earlier commit vs the working tree, one process, alternating.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/exp2_ab.py REV

32 rows of 151,936 logits, flat (randn) and peaked (randn x 15, as `rollout_speed.py --logit-scale 15`): median ms
of 8 rounds of 3 calls each of `sample_tokens` at T = 1 and 0.5, `logsumexp_rows`, HRPO's unfiltered draw and
projected state (`draw_unfiltered` + E^T e / ||e||, E 151,936 x 128), and `head_token_logprobs` forward + backward
on 64 positions (the replay's token path). REV's `sampling.py` and `head_logprobs.py` are read with `git show`.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sampler_ab import load  # noqa: E402

from latentrl import head_logprobs as new_head  # noqa: E402
from latentrl import sampling as new  # noqa: E402


def main(rev: str) -> None:
    torch.set_num_threads(1)
    old, old_head = load(rev, "sampling"), load(rev, "head_logprobs")
    g0 = torch.Generator().manual_seed(0)
    E = torch.randn(151_936, 128, generator=g0) * 0.02
    h = torch.randn(64, 128, generator=g0)
    ids = torch.randint(0, 151_936, (64,), generator=g0)

    def hrpo(mod, logits, g):
        _, _, e = mod.draw_unfiltered(logits, 1.0, g)
        return (e @ E) / e.norm(dim=-1, keepdim=True)

    def head(mod, scale):
        w = (E * scale).requires_grad_()
        hh = h.clone().requires_grad_()
        lp, _ = mod.head_token_logprobs(hh, w, ids, 1.0, chunk=32)
        lp.sum().backward()

    for scale in (1.0, 15.0):
        logits = torch.randn(32, 151_936, generator=torch.Generator().manual_seed(1)) * scale
        cases = {
            "sample T=1": lambda m, hm, g, x=logits: m.sample_tokens(x, 1.0, None, None, g),
            "sample T=0.5": lambda m, hm, g, x=logits: m.sample_tokens(x, 0.5, None, None, g),
            "logsumexp": lambda m, hm, g, x=logits: m.logsumexp_rows(x),
            "hrpo draw+h": lambda m, hm, g, x=logits: hrpo(m, x, g),
            "head fwd+bwd": lambda m, hm, g, s=scale: head(hm, s * 50),
        }
        times: dict[str, dict[str, list[float]]] = {}
        for r in range(9):
            for side, mod, hmod in ((rev, old, old_head), ("tree", new, new_head)):
                for name, fn in cases.items():
                    g = torch.Generator().manual_seed(r)
                    t0 = time.perf_counter()
                    for _ in range(3):
                        fn(mod, hmod, g)
                    if r:  # the first round warms up
                        times.setdefault(name, {}).setdefault(side, []).append((time.perf_counter() - t0) / 3e-3)
        print(f"logits x {scale:g}:")
        for name, sides in times.items():
            a, b = (sorted(v)[len(v) // 2] for v in sides.values())
            print(f"  {name:14s} {rev} {a:7.2f} ms   tree {b:7.2f} ms   {a / b:5.2f}x")


if __name__ == "__main__":
    main(sys.argv[1])
