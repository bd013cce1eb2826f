"""The LM head's product alone, 32 rows at V = 151,936, one thread (issue 18): `torch.mm` on the plain weight (as
HF's `nn.Linear` runs it) against oneDNN's linear on the weight reordered once (`latentrl.packed_head`), whole and in
the library's chunks, at H = 128 (the benchmark's model) and H = 896 (Qwen2.5-0.5B's width); and whether the two give
the same bits at several batch sizes. Medians of 5 interleaved rounds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/packed_head_matmul.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

from latentrl.methods.hrpo.fused_step import chunk_rows
from latentrl.packed_head import PackedHead

torch.set_num_threads(1)
V = 151936


def measure(H: int) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=False)
    h = torch.randn(32, H)
    whole, chunked = PackedHead(), PackedHead()
    with torch.no_grad():
        t = time.perf_counter()
        whole(head, h)
        pack_ms = (time.perf_counter() - t) * 1e3
        chunks = chunked.chunks(head, chunk_rows(H), 32)
        same = {m: torch.equal(whole(head, x), F.linear(x, head.weight)) for m in (1, 7, 32, 64)
                for x in [torch.randn(m, H)]}
        fns = {"torch.mm (nn.Linear)": lambda: F.linear(h, head.weight),
               "packed, whole": lambda: whole(head, h),
               f"packed, chunks of {chunk_rows(H)}": lambda: [chunked.chunk_logits(c, h) for c in chunks]}
        times = {k: [] for k in fns}
        for _ in range(5):
            for k, f in fns.items():
                f()
                t = time.perf_counter()
                f()
                f()
                times[k].append((time.perf_counter() - t) / 2 * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torch.mm (nn.Linear)"]
    print(f"H = {H}: first call (packing included) {pack_ms:.0f} ms; same bits as torch.mm at batch "
          + ", ".join(f"{m}: {s}" for m, s in same.items()))
    for k, v in med.items():
        print(f"  {k:28s} {v:7.2f} ms  ({base / v:.2f}x)")


for H in (128, 896):
    measure(H)
