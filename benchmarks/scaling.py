"""How rollout and update cost grow with batch size and completion length.

For each shape, one fresh subprocess builds the benchmark model (`rollout_speed.build`, the same random-weight
model and prompts as `rollout_speed.py`), then times

* **rollout**: one `generate_rollout` of `--mode` (``discrete``, or a latent operator such as ``soft_mixture``)
  producing exactly `new` positions per row -> positions/s = batch * new / seconds;
* **update**: the policy-gradient pass of a training step on that rollout: `replay` with gradients (shared-prompt
  prefill, chunked log-softmax, as the trainer runs it), a surrogate loss, `backward()` -> tokens/s =
  completion tokens / seconds.

Peak memory is the subprocess's resident high-water mark over the timed passes (reset after the model is built);
`+MB` is that peak over the resident memory before the first timed pass (imports, model, prompts).
Two sweeps: batch 8 -> 256 at `--new-fixed` positions, and completion length 64 -> 512 at `--batch-fixed` rows.
A step that costs more than `--flag-ratio` x the previous step's cost per unit of work (per position or token) is
flagged as growing faster than linearly.

    python benchmarks/scaling.py                           # tiny Qwen2, V=64, discrete and soft_mixture
    python benchmarks/scaling.py --vocab-size 151936 --batches 8 32 128 --lengths 64 128 256
    python benchmarks/scaling.py --vocab-size 151936 --modes gumbel_topk --gumbel-logprob likelihood \
        --gumbel-noise-scale 0.1 --batches 32 128 --lengths 64      # Latent-GRPO's exact likelihood
The last line printed is one JSON object with every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import model_presets
import rollout_speed
from model_presets import add_shape_args

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Rollout positions/s and update tokens/s as batch and length grow.")
    add_shape_args(p)
    p.add_argument("--modes", nargs="+", default=["discrete", "soft_mixture"],
                   help="rollout modes of rollout_speed.py (not 'generate')")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128, 256])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--batch-fixed", type=int, default=32, help="batch of the length sweep")
    p.add_argument("--new-fixed", type=int, default=64, help="completion positions of the batch sweep")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="timed passes per shape (the fastest is kept)")
    p.add_argument("--flag-ratio", type=float, default=1.3,
                   help="flag a step whose cost per unit of work grows by more than this factor")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON rows here")
    rollout_speed.add_gumbel_args(p)
    p.add_argument("--worker", nargs=3, metavar=("MODE", "BATCH", "NEW"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _rollout_args(args: argparse.Namespace, batch: int, new: int) -> argparse.Namespace:
    """The namespace `rollout_speed.build` / `make_runner` expect, for one shape."""
    ns = rollout_speed.parse_args([])
    for key in model_presets.SHAPE_KEYS + ("preset",):
        if getattr(args, key, None) is not None:
            setattr(ns, key, getattr(args, key))
    ns.batch, ns.new, ns.prompt_len = batch, new, args.prompt_len
    ns.threads, ns.device, ns.dtype, ns.seed = args.threads, args.device, args.dtype, args.seed
    ns.gumbel_logprob, ns.gumbel_noise_scale = args.gumbel_logprob, args.gumbel_noise_scale
    rollout_speed.resolve_shape(ns)
    return ns


def worker(args: argparse.Namespace) -> dict:
    """Time one shape in this process; returns its row."""
    import torch

    from latentrl.replay import replay

    mode, batch, new = args.worker[0], int(args.worker[1]), int(args.worker[2])
    torch.set_num_threads(args.threads)
    ns = _rollout_args(args, batch, new)
    lm, ids, mask = rollout_speed.build(ns)
    run = rollout_speed.make_runner(ns, mode, lm, ids, mask)
    operator = getattr(run, "operator", None)
    run()  # warm-up
    rollout_speed.reset_peak_rss()
    base_mb = rollout_speed.current_rss_mb()  # model, prompts and imports: the floor under every shape

    def timed(fn) -> float:
        rollout_speed._sync(ns)
        t0 = time.perf_counter()
        fn()
        rollout_speed._sync(ns)
        return time.perf_counter() - t0

    from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout

    sampling = SamplingParams(max_new_positions=new, temperature=1.0, stop_token_ids=[-1])
    schedule = ThinkingSchedule(num_latent_steps=new) if operator is not None else None
    gen = torch.Generator(device=lm.device).manual_seed(args.seed)
    ro_s = min(timed(run) for _ in range(args.repeats))
    rollout = generate_rollout(lm, ids, mask, sampling, operator=operator, schedule=schedule, generator=gen)

    lm.model.train()
    params = [p for p in lm.model.parameters() if p.requires_grad]

    def update() -> None:
        out = replay(lm, operator, rollout, compute_entropy=False)
        m = rollout.completion_mask[:, : out.logprobs.shape[1]].float()
        loss = -(out.logprobs * m).sum() / m.sum().clamp_min(1)
        loss.backward()
        for p in params:
            p.grad = None

    update()  # warm-up
    up_s = min(timed(update) for _ in range(args.repeats))
    tokens = int(rollout.completion_mask.sum())
    return {"mode": mode, "batch": batch, "new": new, "rollout_s": ro_s, "positions_per_s": batch * new / ro_s,
            "update_s": up_s, "update_tokens_per_s": tokens / up_s, "peak_mb": rollout_speed.peak_rss_mb(), "base_mb": base_mb}


def run_shape(args: argparse.Namespace, argv: list[str], mode: str, batch: int, new: int) -> dict:
    """One shape in a fresh subprocess (peak memory not shared between shapes)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", mode, str(batch), str(new)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    if res.returncode != 0:
        raise RuntimeError(f"shape {mode} batch={batch} new={new} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def flag_superlinear(rows: list[dict], ratio: float) -> None:
    """Mark rows whose seconds per position (batch * new) grew by more than `ratio` over the previous row."""
    for prev, row in zip(rows, rows[1:]):
        for cost in ("rollout_s", "update_s"):
            unit_prev = prev[cost] / (prev["batch"] * prev["new"])
            unit = row[cost] / (row["batch"] * row["new"])
            row[f"{cost}_growth"] = unit / unit_prev
            if unit / unit_prev > ratio:
                row.setdefault("flags", []).append(f"{cost.split('_')[0]} cost per position x{unit / unit_prev:.2f}")


def main(argv: list[str] | None = None) -> dict:
    from latentrl.cpu_allocator import tune_glibc_malloc

    tune_glibc_malloc()  # every worker (ours and `generate`) gets it
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    if "generate" in args.modes:
        raise SystemExit("scaling.py: 'generate' is not a rollout mode here (rollout_speed.py compares it)")
    result: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                               if k != "worker"},
                    "loadavg_start": list(os.getloadavg()), "sweeps": {}}
    for mode in args.modes:
        for sweep, shapes in (("batch", [(b, args.new_fixed) for b in args.batches]),
                              ("length", [(args.batch_fixed, n) for n in args.lengths])):
            rows = [run_shape(args, argv, mode, b, n) for b, n in shapes]
            flag_superlinear(rows, args.flag_ratio)
            result["sweeps"][f"{mode}/{sweep}"] = rows
            print(f"\n{mode}, {sweep} sweep ({'new' if sweep == 'batch' else 'batch'} = "
                  f"{args.new_fixed if sweep == 'batch' else args.batch_fixed})")
            print(f"{'batch':>6} {'new':>5} {'rollout pos/s':>14} {'update tok/s':>13} {'peak MB':>8} {'+MB':>6}  flags")
            for r in rows:
                print(f"{r['batch']:>6} {r['new']:>5} {r['positions_per_s']:>14,.0f} {r['update_tokens_per_s']:>13,.0f}"
                      f" {r['peak_mb']:>8.0f} {r['peak_mb'] - r['base_mb']:>6.0f}  {'; '.join(r.get('flags', []))}")
    result["loadavg_end"] = list(os.getloadavg())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
