"""Would decoding under `torch.inference_mode()` instead of `torch.no_grad()` speed up our GRPO step? (issue 18, goal 3)

At `benchmarks/trainer_vs_trl.py`'s default shape, one process, our `GRPOTrainer.train_step` with its rollouts run
two ways, alternated step by step: `no_grad` (the decode, `latentrl.rollout._decode`, under `torch.no_grad()`, as
`generate_rollout` ran it until 2026-12-08) and `inference_mode` (`generate_rollout` as shipped since: the decode
inside `torch.inference_mode()`, every returned tensor cloned after, because the update saves some of them for
backward and inference tensors may not be saved). Prints the median step and rollout ("collect") milliseconds of
each over the rounds after two warm-ups, and their ratios.

    LATENTRL_THREADS=1 OMP_NUM_THREADS=1 taskset -c 0 python docs/bench/trainer_vs_trl/rollout_inference_mode.py
"""
import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
import trainer_vs_trl as tv  # noqa: E402

import latentrl.rl.trainer as trainer_module  # noqa: E402
from latentrl.rollout import Rollout, _decode, generate_rollout  # noqa: E402

ROUNDS = 16


def under_no_grad(model, prompt_ids, prompt_mask, sampling, operator=None, schedule=None, generator=None, *,
                  decoder="auto") -> Rollout:
    with torch.no_grad():
        return _decode(model, prompt_ids, prompt_mask, sampling, operator, schedule, generator, decoder)


def main() -> None:
    trainer = tv.ours_alone()
    times: dict[str, list[tuple[float, float]]] = {"no_grad": [], "inference_mode": []}
    for r in range(ROUNDS):
        for name, fn in (("no_grad", under_no_grad), ("inference_mode", generate_rollout)):
            trainer_module.generate_rollout = fn
            t0 = time.perf_counter()
            m = trainer.train_step()
            if r >= 2:
                times[name].append((time.perf_counter() - t0, m["time/generation_s"]))
    med = {k: (statistics.median(s for s, _ in v), statistics.median(g for _, g in v)) for k, v in times.items()}
    for k, (s, g) in med.items():
        print(f"{k:15s} step {1e3 * s:6.1f} ms   collect {1e3 * g:6.1f} ms")
    (s0, g0), (s1, g1) = med["no_grad"], med["inference_mode"]
    print(f"no_grad / inference_mode: step {s0 / s1:.3f}x, collect {g0 / g1:.3f}x  ({ROUNDS - 2} rounds each)")


if __name__ == "__main__":
    main()
