"""The two full-vocabulary matmuls of an HRPO step at V = 151,936 (issue 18: HRPO 2.73x, goal 3x), in the layouts
torch offers, one thread, 32 rows, hidden 128:

    OMP_NUM_THREADS=1 python docs/bench/speed/lm_head_layouts.py

`linear` / `mm_hWt`: the LM head as HF computes it (h @ W^T); `mm_Wht`: W @ h^T (the transposed product, faster on
its own) and `mm_Wht_T_contig`: the same made row-major again for sampling; `pE`: HRPO's projected state p @ E.
"""
import time

import torch

torch.set_num_threads(1)
V, H, B = 151936, 128, 32
W = torch.randn(V, H) * 0.02
h = torch.randn(B, H)
p = torch.rand(B, V)
buf = torch.empty(B, V)
fs = {
    "linear": lambda: torch.nn.functional.linear(h, W),
    "mm_hWt": lambda: torch.mm(h, W.t()),
    "mm_hWt_out": lambda: torch.mm(h, W.t(), out=buf),
    "mm_Wht": lambda: torch.mm(W, h.t()),
    "mm_Wht_T_contig": lambda: torch.mm(W, h.t()).t().contiguous(),
    "pE": lambda: torch.mm(p, W),
}
for r in range(2):
    for k, f in fs.items():
        for _ in range(3):
            f()
        t = time.perf_counter()
        for _ in range(15):
            f()
        print(r, k, round((time.perf_counter() - t) / 15 * 1e3, 2), "ms")
