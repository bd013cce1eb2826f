"""Where an HRPO step goes at V = 151,936 (issue 18): one `HRPOGateThought.step` on the rollout benchmark's model
(peaked, --logit-scale 15), timed and profiled, against the LM head alone, one thread.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/hrpo_step_profile.py
"""
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

from latentrl.thoughts import build_thought_operator

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import rollout_speed as rs  # noqa: E402

torch.set_num_threads(1)
args = rs.parse_args(["--vocab-size", "151936", "--logit-scale", "15"])
lm, ids, mask = rs.build(args)
op = build_thought_operator("hrpo_gate")
op.attach(lm)
with torch.no_grad():
    out = lm.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    logits, hidden = out.logits[:, -1].contiguous(), out.hidden_states[-1][:, -1]
    print("mean top-1 probability", round(logits.float().softmax(-1).amax(-1).mean().item(), 3), tuple(logits.shape))
    g = torch.Generator().manual_seed(0)
    head = lm.model.get_output_embeddings()
    for name, f in (("hrpo step", lambda: op.step(lm, logits, hidden, generator=g)), ("lm head", lambda: head(hidden))):
        for _ in range(3):
            f()
        t = time.perf_counter()
        for _ in range(20):
            f()
        print(f"{name}: {(time.perf_counter() - t) / 20 * 1e3:.1f} ms")
    with profile() as prof:
        for _ in range(10):
            op.step(lm, logits, hidden, generator=g)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
