"""HRPO's step from the hidden state at V = 151,936 (issue 18): the unfused LM head + step against the fused pass
(`latentrl.methods.hrpo.fused_step`) at several chunk sizes, on the rollout benchmark's model (peaked,
--logit-scale 15), one thread, interleaved rounds, median ms per step.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/hrpo_fused_chunks.py
    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/hrpo_fused_chunks.py --hidden 896 --layers 1 --heads 14 \
        --kv-heads 2    # Qwen2.5-0.5B's width and vocabulary (one layer: only the head and the step are timed)

Extra arguments go to the rollout benchmark's model options (`benchmarks/rollout_speed.py`).
"""
import statistics
import sys
import time
from pathlib import Path

import torch

from latentrl.methods.hrpo import fused_step
from latentrl.thoughts import build_thought_operator

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import rollout_speed as rs  # noqa: E402

torch.set_num_threads(1)
args = rs.parse_args(["--vocab-size", "151936", "--logit-scale", "15", *sys.argv[1:]])
lm, ids, mask = rs.build(args)
op = build_thought_operator("hrpo_gate")
op.attach(lm)
CHUNKS = (0, 1024, 2048, 4096, 8192, 16384)  # rows; 0: unfused (the LM head, then `step`)
DEFAULT_BYTES = fused_step.CHUNK_BYTES
times: dict[int, list[float]] = {c: [] for c in CHUNKS}
with torch.no_grad():
    out = lm.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    hidden = out.hidden_states[-1][:, -1].contiguous()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        for c in CHUNKS:
            fused_step.MIN_VOCAB = 10**9 if c == 0 else 32768
            fused_step.CHUNK_BYTES = (c or 4096) * lm.hidden_size * 4
            for _ in range(2):
                op.step_from_hidden(lm, hidden, generator=g)
            t = time.perf_counter()
            for _ in range(10):
                op.step_from_hidden(lm, hidden, generator=g)
            times[c].append((time.perf_counter() - t) / 10 * 1e3)
base = statistics.median(times[0])
default = max(1, DEFAULT_BYTES // (lm.hidden_size * 4 * 1024)) * 1024
print(f"batch {hidden.shape[0]}, V {lm.vocab_size}, H {lm.hidden_size}, library default chunk {default} rows, tied head: "
      f"{lm.model.get_output_embeddings().weight.data_ptr() == lm.embedding_matrix.data_ptr()}")
for c in CHUNKS:
    med = statistics.median(times[c])
    label = "unfused (LM head + step)" if c == 0 else f"fused, chunk {c}"
    print(f"{label:28s} median {med:6.1f} ms  ({base / med:.2f}x unfused)  rounds: "
          + " ".join(f"{x:.1f}" for x in times[c]))
