"""Rollouts with and without the prepacked LM head (`latentrl.packed_head`, issue 18), side by side in one process:
the rollout benchmark's modes at V = 151,936 (peaked, --logit-scale 15, batch 32, 16 positions), the packed head
switched off and on (`packed_head.ENABLED`) in interleaved rounds, with HF `generate` in the same rounds for the ratio
the benchmark reports. Median ms a position.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/packed_head_ab.py [--rounds 5] [--modes discrete,hrpo_gate]
        [rollout_speed.py model options, e.g. --hidden 896 --layers 1 --heads 14 --kv-heads 2]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from latentrl import packed_head

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import rollout_speed as rs  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--modes", default="discrete,soft_mixture,gumbel_softmax,gumbel_topk,hrpo_gate")
ns, rest = ap.parse_known_args()
torch.set_num_threads(1)
args = rs.parse_args(["--vocab-size", "151936", "--logit-scale", "15", "--new", "16", *rest])
lm, ids, mask = rs.build(args)
runners = {("generate", None): rs.make_runner(args, "generate", lm, ids, mask)}
for mode in ns.modes.split(","):
    run = rs.make_runner(args, mode, lm, ids, mask)
    runners[(mode, False)] = runners[(mode, True)] = run
times: dict[tuple, list[float]] = {k: [] for k in runners}
for _ in range(ns.rounds):
    for key, run in runners.items():
        packed_head.ENABLED = key[1] is not False
        run()  # warm-up (and the packing, once per rollout, is in every timed rollout too)
        t = time.perf_counter()
        run()
        run()
        times[key].append((time.perf_counter() - t) / 2 / args.new * 1e3)
med = {k: statistics.median(v) for k, v in times.items()}
gen = med[("generate", None)]
print(f"batch {args.batch}, V {lm.vocab_size}, H {lm.hidden_size}, {args.new} positions, {ns.rounds} interleaved rounds "
      f"of 2 rollouts each (+1 warm-up), 1 thread")
print(f"{'mode':16s} {'plain head':>11s} {'packed head':>12s} {'packed vs plain':>16s} {'vs generate':>18s}")
print(f"{'generate':16s} {gen:9.1f} ms")
for mode in ns.modes.split(","):
    a, b = med[(mode, False)], med[(mode, True)]
    print(f"{mode:16s} {a:9.1f} ms {b:10.1f} ms {a / b:15.2f}x   {gen / a:5.2f}x -> {gen / b:5.2f}x")
