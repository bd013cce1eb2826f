"""Where a GRPO step's time goes, TRL vs ours, at `benchmarks/trainer_vs_trl.py`'s default shape.

    OMP_NUM_THREADS=1 python docs/bench/trainer_vs_trl/phases.py

TRL's `_generate_and_score_completions` (generation, reference forward, rewards) and its `compute_loss` + backward,
vs our reference replay (`_prepare_for_update`) and our `compute_loss` + backward, on the same TRL batch (TRL's
current log-probs as the old ones); 6 rounds, the first left out of the median.
"""

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, "benchmarks")
import trainer_vs_trl as tv  # noqa: E402

from latentrl.rl.batch import StepBatch  # noqa: E402
from latentrl.rollout import Rollout  # noqa: E402


def main() -> None:
    args = tv.parse_args([])
    tv.use_device(args.device)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp())
    tok = tv.save_tiny_model(args, tmp / "model")
    G = args.num_generations
    rows = tv.make_rows(args, 64)
    ours = tv.build_ours(args, tmp / "model", tok, rows, tmp)
    trl = tv.build_trl(args, tmp / "model", tok, rows, tmp, max_steps=1)
    prompts = [dict(r) for r in ours.rows[: args.batch // G] for _ in range(G)]
    trl.model.train()
    trl.current_gradient_accumulation_steps = 1
    times: dict[str, list[float]] = {k: [] for k in ("trl_gen", "trl_loss_bwd", "ours_ref", "ours_loss_bwd")}

    @contextlib.contextmanager
    def timed(key):
        t0 = time.perf_counter()
        yield
        times[key].append(time.perf_counter() - t0)

    for _ in range(6):
        with timed("trl_gen"):
            inputs = trl._generate_and_score_completions(prompts)
        ids, cmask = inputs["completion_ids"], inputs["completion_mask"].bool()
        inputs["num_items_in_batch"] = cmask.sum()
        if not bool(inputs["advantages"].any()):
            inputs["advantages"] = torch.randn(ids.shape[0])
        with torch.no_grad():
            old, _, _ = trl._get_per_token_logps_and_entropies(
                trl.model, torch.cat([inputs["prompt_ids"], ids], 1),
                torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), ids.shape[1])
        inputs["old_per_token_logps"] = old.float()
        for p in trl.model.parameters():
            p.grad = None
        with timed("trl_loss_bwd"):
            trl.compute_loss(trl.model, inputs).backward()
        n = ids.shape[0]
        rollout = Rollout(prompt_ids=inputs["prompt_ids"], prompt_mask=inputs["prompt_mask"].bool(),
                          completion_ids=ids, completion_mask=cmask, latent_mask=torch.zeros_like(cmask),
                          forced_mask=torch.zeros_like(cmask), logprobs=old.float(),
                          truncated=torch.zeros(n, dtype=torch.bool), payload={})
        batch = StepBatch(rollout, prompts, [""] * n, torch.zeros(n), inputs["advantages"].float())
        with timed("ours_ref"):
            ours._prepare_for_update(batch)
        batch.old_logprobs = old.float()
        for p in ours.model.model.parameters():
            p.grad = None
        tokens = float(ours.loss_mask(batch).sum())
        with timed("ours_loss_bwd"):
            ours.compute_loss(batch, num_sequences=n, num_tokens=tokens, num_micro=1)[0].backward()
    for k, v in times.items():
        print(k, f"median {statistics.median(v[1:]):.4f}", [round(x, 4) for x in v])


if __name__ == "__main__":
    main()
