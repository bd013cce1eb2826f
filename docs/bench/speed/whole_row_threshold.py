"""Latent-GRPO's step at small vocabularies: the whole-row path (`_step_whole_row`) against the candidate-prefix path,
one process, 32 rows, flat (scale 1) and peaked (scale 5) random logits; sets `sort_all_limit`.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/whole_row_threshold.py
"""
import time

import torch

from latentrl.thoughts import build_thought_operator


class Embeds:
    """The one thing the step needs from a model: `embed`."""

    def __init__(self, V: int, H: int = 128):
        self.E = torch.randn(V, H)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.E)


def us_per_call(f, n: int = 1000) -> float:
    for _ in range(50):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


torch.set_num_threads(1)
op = build_thought_operator("gumbel_topk")
g = torch.Generator().manual_seed(0)
print("V      scale  candidate-prefix us  whole-row us")
with torch.no_grad():
    for V in (64, 128, 256, 512, 1024):
        m = Embeds(V)
        for scale in (1.0, 5.0):
            logits = torch.randn(32, V, generator=torch.Generator().manual_seed(V)) * scale
            op.sort_all_limit = 0
            a = us_per_call(lambda m=m, x=logits: op.step(m, x, None, generator=g))
            op.sort_all_limit = 10**9
            b = us_per_call(lambda m=m, x=logits: op.step(m, x, None, generator=g))
            print(f"{V:<6} {scale:<6} {a:>19.0f}  {b:>12.0f}")
