"""How close HRPO's fused step is to its two matmuls (issue 18, goal 1: HRPO >= 3x `generate` at V = 151,936).

Profiles `fused_head_step` on the rollout benchmark's model (--logit-scale 15, batch 32, one thread) and times the
step's two vocabulary-sized matmuls alone, chunked as the step does them: the LM head (h @ W^T, the one `generate`
does too) and the mixture (e @ E), plus the LM head as one matmul. What is left above the two matmuls is all the
fusing could still save.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/hrpo_step_bound.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from latentrl.methods.hrpo import fused_step as fs

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import rollout_speed as rs  # noqa: E402

torch.set_num_threads(1)
args = rs.parse_args(["--vocab-size", "151936", "--logit-scale", "15"])
lm, ids, mask = rs.build(args)
head, E = fs.fusable_head(lm, torch.device("cpu")), lm.embedding_matrix
W = head.weight
V, H = W.shape
with torch.no_grad():
    hidden = lm.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[-1][:, -1]
    hidden = hidden.contiguous()
    B = hidden.shape[0]
    n = fs.chunk_rows(H)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        fs.fused_head_step(head, E, hidden, 1.0, g)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            fs.fused_head_step(head, E, hidden, 1.0, g)
    e = torch.rand(B, n)

    def head_chunks():
        for s in range(0, V, n):
            torch.matmul(hidden, W[s:s + n].T)

    def mix_chunks():
        mix = torch.zeros(B, H)
        for s in range(0, V, n):
            k = min(n, V - s)
            mix.addmm_(e[:, :k], E[s:s + k])

    def step():
        fs.fused_head_step(head, E, hidden, 1.0, g)

    fns = {"fused step": step, "LM head, chunked": head_chunks, "mixture, chunked": mix_chunks,
           "LM head, one matmul": lambda: torch.matmul(hidden, W.T)}
    times = {k: [] for k in fns}
    for _ in range(7):
        for k, f in fns.items():
            f()
            t = time.perf_counter()
            for _ in range(3):
                f()
            times[k].append((time.perf_counter() - t) / 3 * 1e3)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
print(f"batch {B}, V {V}, H {H}, chunk {n} rows; medians of 7 interleaved rounds:")
med = {k: statistics.median(v) for k, v in times.items()}
for k, v in med.items():
    print(f"  {k:22s} {v:6.1f} ms")
both = med["LM head, chunked"] + med["mixture, chunked"]
print(f"  the two matmuls: {both:.1f} ms = {both / med['fused step']:.0%} of the fused step")
