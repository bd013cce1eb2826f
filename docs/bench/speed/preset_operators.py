"""Each method preset's operator (configs/cpu/<method>.yaml) at V = 151,936: an all-latent rollout of 32 x 64 and
the update (replay with gradients + backward), one process per method, e.g.

    PYTHONPATH=src python docs/bench/speed/preset_operators.py latent_grpo

A survey for configurations that take a slow path at a real vocabulary (as Latent-GRPO's exact likelihood did):
seconds of one rollout and one update, peak resident MB of the process. dlr / dlr_prefix need their assistant
(not built here); grpo has no operator.
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import rollout_speed  # noqa: E402

from latentrl.config import GRPOConfig, load_config  # noqa: E402
from latentrl.methods import get_method  # noqa: E402
from latentrl.replay import replay  # noqa: E402
from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout  # noqa: E402

torch.set_num_threads(1)
method = sys.argv[1]
args = rollout_speed.parse_args(["--vocab-size", "151936", "--new", "64", "--batch", "32", "--threads", "1"])
lm, ids, mask = rollout_speed.build(args)
cfg = load_config(GRPOConfig, f"configs/cpu/{method}.yaml", ["model_name_or_path=x"])
m = get_method(method)
m.setup(lm, cfg)
op = m.build_operator(cfg.latent, lm)
if op is None:
    sys.exit(f"{method}: no thought operator")
op.attach(lm)
print(method, type(op).__name__, op.extra_repr())
sampling = SamplingParams(max_new_positions=64, temperature=1.0, stop_token_ids=[-1])
schedule = ThinkingSchedule(num_latent_steps=64)
gen = torch.Generator().manual_seed(0)
generate_rollout(lm, ids, mask, sampling, operator=op, schedule=schedule, generator=gen)  # warm-up
t = time.perf_counter()
r = generate_rollout(lm, ids, mask, sampling, operator=op, schedule=schedule, generator=gen)
rollout_s = time.perf_counter() - t
lm.model.train()
t = time.perf_counter()
out = replay(lm, op, r, compute_entropy=False)
(out.logprobs * r.completion_mask[:, : out.logprobs.shape[1]]).sum().backward()
update_s = time.perf_counter() - t
print(json.dumps({"method": method, "rollout_s": round(rollout_s, 2), "update_s": round(update_s, 2),
                  "peak_mb": round(rollout_speed.maxrss_mb())}))
