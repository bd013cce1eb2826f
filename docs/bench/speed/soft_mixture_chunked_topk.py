"""soft_mixture needs only the top-k of each row's logits: can the packed LM head be walked in chunks of rows, keeping
a running top-k, so that no (B, V) logits tensor exists (less heap growth)? Same result, but is it as fast?
V = 151,936, H = 128, 32 rows, k = 10, one thread:

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/soft_mixture_chunked_topk.py

`full`: the whole packed head, then `topk_rows` (what the rollout does); `chunkR`: R-row packed chunks, `torch.topk`
of each chunk's logits, then the top-k of those.
"""
import time

import torch

from latentrl.sampling import topk_rows

torch.set_num_threads(1)
V, H, B, k = 151936, 128, 32, 10
W = torch.randn(V, H) * 0.3
x = torch.randn(B, H)
whole = torch.ops.mkldnn._reorder_linear_weight(W, B)


def full():
    return topk_rows(torch.ops.mkldnn._linear_pointwise(x, whole, None, "none", [], ""), k)


def chunked(rows):
    packed = [torch.ops.mkldnn._reorder_linear_weight(W[s:s + rows].contiguous(), B) for s in range(0, V, rows)]

    def f():
        vals, ids = [], []
        for i, c in enumerate(packed):
            v, j = torch.topk(torch.ops.mkldnn._linear_pointwise(x, c, None, "none", [], ""), k, dim=-1)
            vals.append(v)
            ids.append(j + i * rows)
        top = torch.topk(torch.cat(vals, -1), k, dim=-1)
        return top.values, torch.cat(ids, -1).gather(-1, top.indices)
    f.__name__ = f"chunk{rows}"
    return f


fs = [full] + [chunked(r) for r in (2048, 4096, 8192, 16384)]
ref = full()
for f in fs:
    v, i = f()
    print(f.__name__, "same values", torch.equal(v, ref[0]), "same ids", torch.equal(i, ref[1]))
for r in range(2):
    for f in fs:
        for _ in range(3):
            f()
        t = time.perf_counter()
        for _ in range(20):
            f()
        print(r, f.__name__, f"{(time.perf_counter() - t) / 20 * 1000:.2f} ms")
