"""HRPO rollouts with and without the fused head step (issue 18), side by side in one process: the rollout
benchmark's `hrpo_gate` mode at V = 151,936 (peaked, --logit-scale 15, batch 32, 16 positions, every one hybrid),
the fused step switched off by raising `fused_step.MIN_VOCAB` above the vocabulary. Interleaved rounds, median ms a
position, and HF `generate` in the same rounds for the ratio the benchmark reports.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/hrpo_fused_ab.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch

from latentrl.methods.hrpo import fused_step

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import rollout_speed as rs  # noqa: E402

torch.set_num_threads(1)
ROUNDS = 9
args = rs.parse_args(["--vocab-size", "151936", "--logit-scale", "15", "--new", "16"])
lm, ids, mask = rs.build(args)
runners = {"generate": rs.make_runner(args, "generate", lm, ids, mask),
           "hrpo unfused": rs.make_runner(args, "hrpo_gate", lm, ids, mask)}
runners["hrpo fused"] = runners["hrpo unfused"]
on = fused_step.MIN_VOCAB
times: dict[str, list[float]] = {k: [] for k in runners}
for _ in range(ROUNDS):
    for name, run in runners.items():
        fused_step.MIN_VOCAB = on if name == "hrpo fused" else 10**9
        run()  # warm-up
        t = time.perf_counter()
        run()
        run()
        times[name].append((time.perf_counter() - t) / 2 / args.new * 1e3)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"batch {args.batch}, V {lm.vocab_size}, {args.new} positions, {ROUNDS} interleaved rounds of 2 rollouts each")
for k, v in times.items():
    print(f"{k:14s} median {med[k]:6.1f} ms/position  vs generate {med['generate'] / med[k]:5.2f}x  rounds: "
          + " ".join(f"{x:.1f}" for x in v))
print(f"fused vs unfused: {med['hrpo unfused'] / med['hrpo fused']:.2f}x")
