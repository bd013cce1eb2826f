"""How much of the trainer benchmark's rollout is per-op overhead? (issue 18, goal 3)

The rollout of `benchmarks/trainer_vs_trl.py`'s default shape (tiny Qwen2, 16-token prompts, 64 new tokens, every
completion full length) at 32 rows and at 1 row, interleaved in one process: at 1 row the arithmetic is ~1/32 of
the 32-row rollout's, so its time is mostly PyTorch's per-op cost. Also the aten calls per decode step
(torch.profiler, 32 rows).

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/trainer_vs_trl/rollout_overhead.py
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from torch.profiler import profile

sys.path.insert(0, "benchmarks")
import trainer_vs_trl as tv  # noqa: E402

from latentrl.rollout import generate_rollout  # noqa: E402

ROUNDS = 15


def main() -> None:
    args = tv.parse_args([])
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp())
    tok = tv.save_tiny_model(args, tmp / "model")
    rows = tv.make_rows(args, 64)
    trainer = tv.build_ours(args, tmp / "model", tok, rows, tmp)
    model = trainer.model.eval()
    batches = {n: trainer._tokenize_prompts([r for r in rows[:4] for _ in range(8)][:n]) for n in (32, 1)}

    def roll(n: int):
        ids, mask = batches[n]
        return generate_rollout(model, ids, mask, trainer.sampling, None, None, torch.Generator().manual_seed(0))

    times: dict[int, list[float]] = {32: [], 1: []}
    for r in range(ROUNDS + 2):
        for n in times:
            t0 = time.perf_counter()
            out = roll(n)
            if r >= 2:
                times[n].append(time.perf_counter() - t0)
    steps = out.completion_ids.shape[1]
    for n, ts in times.items():
        print(f"{n:2d} rows: median {1e3 * statistics.median(ts):6.1f} ms, min {1e3 * min(ts):6.1f} ms per rollout of "
              f"{steps} steps ({ROUNDS} rounds)")
    with profile() as prof:
        roll(32)
    calls = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    print(f"aten calls per decode step (32 rows, incl. views and the ops inside composite kernels): {calls / steps:.0f}")


if __name__ == "__main__":
    main()
