"""One GRPO optimizer step: latentrl's `GRPOTrainer` (method "grpo") vs. TRL's `GRPOTrainer`, same model and data.

Both trainers get the same random-weight model (built once, saved to a temporary folder, loaded twice), the same
tokenizer, prompts (all exactly ``--prompt-len`` tokens), reward function, batch, ``num_generations``, loss type,
``beta``, ``epsilon``/``epsilon_high``, learning rate and optimizer (AdamW, constant LR, grad-norm clip 1.0).
Completion length is forced equal: TRL generates with ``min_new_tokens = max_new_tokens = L`` (EOS suppressed), and
ours stops on no token id, so every completion of both has exactly L tokens and the compute per step is the same.

1. **Loss agreement** (no timing): TRL builds one rollout batch with its own ``_generate_and_score_completions``;
   the same tensors (completions, advantages, reference log-probs and *perturbed* old log-probs, so the clip is
   active on both sides) are fed to TRL's ``compute_loss`` and to ours (a ``StepBatch`` wrapping the same ids).
   The losses and every parameter's gradient are compared for each loss type (``grpo``, ``bnpo``, ``dr_grpo``,
   ``dapo``), and our replay's reference log-probs against TRL's.
2. **Timing**: TRL's own ``Trainer.train()`` runs ``warmup + repeats`` optimizer steps; a callback runs one step of
   ours (``GRPOTrainer.train_step``) right after each TRL step, so the two alternate (TRL, ours, TRL, ours, ...) in
   one process and background load hits both alike. A TRL step is the time between two consecutive
   ``on_step_end`` events minus the ours-step inside it (it includes TRL's data loading, generation, scoring,
   reference forward, loss, backward, clip and optimizer step, and its per-step logging bookkeeping); an ours step
   is ``train_step()`` (the same stages). Median over the steps after warm-up, wall clock and process CPU time.

Threads: torch uses ``--threads`` intra-op threads (default: ``LATENTRL_THREADS``, else 1) for BOTH trainers, which
share this process; the JSON reports ``torch.get_num_threads()`` read inside each timed step. TRL's TrainingArguments:
``gradient_checkpointing=False`` (TRL's default is on; ours does not checkpoint), ``optim="adamw_torch"``, no
logging/saving/reporting.

Model, device, precision: ``--preset`` (``benchmarks/model_presets.py``, e.g. ``qwen2.5-0.5b``) or the shape
options; the word tokenizer is grown to the model's vocab, so every sampled id is a word. ``--device cpu`` (default;
``ACCELERATE_USE_CPU`` is set so both trainers stay on the CPU) or ``cuda`` (steps timed between
``torch.cuda.synchronize()`` calls, peak GPU memory per trainer). ``--dtype float32`` (default) or ``bfloat16``:
fp32 weights and optimizer state in both, matmuls under bf16 autocast in both (TRL ``bf16=True``, ours
``mixed_precision="bf16"``: accelerate's autocast around rollout, reference forward and loss).

FLOPs and MFU (``benchmarks/flops.py``): the model FLOPs of our update (no-grad reference replay if beta > 0, then
the policy replay forward and backward = 3x its forward; each group's prompt once, as our replay runs it) over the
update's wall time (our step minus its rollout and rewards), against ``--peak-tflops`` or the GPU's dense peak.

The last line printed is one JSON object (see benchmarks/README.md)::

    LATENTRL_THREADS=1 python benchmarks/trainer_vs_trl.py
    python benchmarks/trainer_vs_trl.py --batch 16 --num-generations 4 --completion-len 32 --repeats 9
    python benchmarks/trainer_vs_trl.py --check-only                    # loss agreement only
    python benchmarks/trainer_vs_trl.py --profile cprofile              # + cProfile of our timed steps
    python benchmarks/trainer_vs_trl.py --preset qwen2.5-0.5b --device cuda --dtype bfloat16   # GPU figures + MFU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flops
import model_presets

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Seconds per GRPO optimizer step: latentrl GRPOTrainer vs. TRL GRPOTrainer (same model, data, "
                    "loss), plus a loss/gradient agreement check on identical rollouts.",
        epilog="The last line printed is a JSON object; see benchmarks/README.md for its keys.",
    )
    model_presets.add_shape_args(p, arch=False, vocab_help="model and tokenizer vocab (default: 30 + --words; "
                                                           "the tokenizer gets vocab - 30 words)")
    p.add_argument("--words", type=int, default=None,
                   help="extra words in the tokenizer without --vocab-size / --preset (default 32: vocab 62)")
    p.add_argument("--batch", type=int, default=32,
                   help="completions per optimizer step = per_device_train_batch_size (default 32, one micro-batch)")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt G (default 8)")
    p.add_argument("--prompt-len", type=int, default=16, help="tokens per prompt, all prompts equal (default 16)")
    p.add_argument("--completion-len", type=int, default=64,
                   help="tokens per completion L, forced for every completion (default 64)")
    p.add_argument("--loss-type", choices=LOSS_TYPES, default="dapo",
                   help="loss aggregation of the timed steps (default dapo, both trainers' default); the agreement "
                        "check covers all of " + ", ".join(LOSS_TYPES))
    p.add_argument("--beta", type=float, default=0.04,
                   help="KL coefficient (default 0.04: both trainers then also run a reference-model forward)")
    p.add_argument("--epsilon", type=float, default=0.2, help="lower clip range (default 0.2)")
    p.add_argument("--epsilon-high", type=float, default=0.28, help="upper clip range (default 0.28, DAPO)")
    p.add_argument("--learning-rate", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling and loss temperature (default 1.0)")
    p.add_argument("--old-logprob-noise", type=float, default=0.3,
                   help="agreement check: std of the noise added to the old log-probs so that ratios != 1 and the "
                        "clip is active (default 0.3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each trainer first (default 2, min 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps of each trainer, median reported (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for both trainers (default: $LATENTRL_THREADS, else 1)")
    p.add_argument("--seed", type=int, default=0, help="model weights, prompts, sampling (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="both trainers' device (default cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="float32 (default) or bfloat16: bf16 autocast over fp32 weights in both trainers")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s for the MFU (default: the GPU's dense peak for --dtype from benchmarks/flops.py; "
                        "none known on CPU, so no MFU)")
    p.add_argument("--check-only", action="store_true", help="only the loss agreement check, no timing")
    p.add_argument("--profile", choices=("cprofile", "torch"), default=None,
                   help="profile OUR timed steps (cProfile or torch.profiler) and print the top entries")
    p.add_argument("--profile-trl", action="store_true", help="with --profile: profile TRL's timed steps instead")
    p.add_argument("--profile-top", type=int, default=30, help="rows of profile output (default 30)")
    args = p.parse_args(argv)
    if args.words is not None and (args.vocab_size is not None or args.preset is not None):
        p.error("--words sets the vocab of the default tiny model; with --vocab-size or --preset leave it out")
    if args.vocab_size is None and args.preset is None:
        args.vocab_size = model_presets.word_tokenizer_fixed() + (32 if args.words is None else args.words)
    model_presets.resolve_shape(args, min_positions=args.prompt_len + args.completion_len + 8)
    args.words = model_presets.word_tokenizer_words(args.vocab_size)
    if args.vocab_size != model_presets.word_tokenizer_fixed() + args.words:
        p.error(f"--vocab-size must be at least {model_presets.word_tokenizer_fixed()} (the word tokenizer's fixed "
                "tokens)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device is visible to torch")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        p.error("--peak-tflops must be > 0")
    if args.threads is None:
        args.threads = int(os.environ.get("LATENTRL_THREADS") or 1)
    if args.warmup < 1 or args.repeats < 1:
        p.error("--warmup and --repeats must be >= 1 (TRL's first step has no start mark)")
    if args.batch % args.num_generations:
        p.error(f"--batch ({args.batch}) must be divisible by --num-generations ({args.num_generations})")
    if args.num_generations < 2:
        p.error("--num-generations must be >= 2 (TRL requires it)")
    return args


def config_dict(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("preset", "hidden", "layers", "heads", "kv_heads", "intermediate", "vocab_size", "words", "batch",
            "num_generations", "prompt_len", "completion_len", "loss_type", "beta", "epsilon", "epsilon_high",
            "learning_rate", "temperature", "warmup", "repeats", "threads", "seed", "device", "dtype", "peak_tflops")
    return {k: getattr(args, k) for k in keys}


# ---------------------------------------------------------------------------------------------------- shared setup
def save_tiny_model(args: argparse.Namespace, folder: Path):
    """Random-weight Qwen2 of the resolved shape (fp32) + word tokenizer of its vocab, saved to `folder`; returns
    the tokenizer.

    Saved so that both trainers (and TRL's reference model, which TRL loads from `config._name_or_path`) start
    from byte-identical weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from latentrl.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer([f"w{i}" for i in range(args.words)])
    cfg = model_presets.hf_config(args, len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def load_hf(folder: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    model.config._name_or_path = str(folder)  # TRL builds its reference model from this path
    return model


def make_rows(args: argparse.Namespace, n: int) -> list[dict[str, str]]:
    """`n` prompts of exactly `prompt_len` vocabulary words (so prompt shapes never differ between trainers)."""
    import random

    rng = random.Random(args.seed)
    vocab = [f"w{i}" for i in range(args.words)] + [str(d) for d in range(10)]
    return [{"prompt": " ".join(rng.choice(vocab) for _ in range(args.prompt_len))} for _ in range(n)]


def digit_reward(prompts, completions, **kwargs) -> list[float]:
    """Fraction of completion words that are digits: cheap, deterministic, varies within a group."""
    out = []
    for c in completions:
        words = c.split()
        out.append(sum(w.isdigit() for w in words) / max(1, len(words)))
    return out


def build_ours(args: argparse.Namespace, folder: Path, tok, rows, out_dir: Path):
    from latentrl.config import GRPOConfig
    from latentrl.model import LatentModel
    from latentrl.rl.trainer import GRPOTrainer

    cfg = GRPOConfig(
        model_name_or_path=str(folder), output_dir=str(out_dir / "ours"), method="grpo", seed=args.seed,
        learning_rate=args.learning_rate, max_steps=10**6, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, num_generations=args.num_generations, max_prompt_length=args.prompt_len,
        max_completion_length=args.completion_len, temperature=args.temperature, beta=args.beta,
        epsilon=args.epsilon, epsilon_high=args.epsilon_high, loss_type=args.loss_type, report_to=["none"],
        lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0,
        mixed_precision="bf16" if args.dtype == "bfloat16" else "no",
    )
    lm = LatentModel(load_hf(folder), tok)
    trainer = GRPOTrainer(cfg, lm, rows, reward_funcs=[digit_reward], method="grpo")
    # force L tokens per completion: a stop id that no sampled token can equal (TRL: min_new_tokens = L)
    trainer.sampling = dataclasses.replace(trainer.sampling, stop_token_ids=[-1])
    return trainer


def ours_alone(argv: list[str] | None = None, num_rows: int = 64):
    """Our trainer at this benchmark's shape (`argv`: its options; default, the default shape), built in a temporary
    folder with one torch thread, for the experiment scripts under docs/bench/trainer_vs_trl/."""
    import torch
    import transformers

    args = parse_args(argv or [])
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp())
    tok = save_tiny_model(args, tmp / "model")
    return build_ours(args, tmp / "model", tok, make_rows(args, num_rows), tmp / "out")


def build_trl(args: argparse.Namespace, folder: Path, tok, rows, out_dir: Path, max_steps: int, callbacks=()):
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    cfg = TRLConfig(
        output_dir=str(out_dir / "trl"), seed=args.seed, learning_rate=args.learning_rate, max_steps=max_steps,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, num_generations=args.num_generations,
        max_completion_length=args.completion_len, temperature=args.temperature, beta=args.beta,
        epsilon=args.epsilon, epsilon_high=args.epsilon_high, loss_type=args.loss_type, num_iterations=1,
        lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0, optim="adamw_torch",
        generation_kwargs={"min_new_tokens": args.completion_len},
        use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16", fp16=False, gradient_checkpointing=False,
        disable_dropout=True,
        report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0,
    )
    return TRLTrainer(model=load_hf(folder), reward_funcs=[digit_reward], args=cfg, train_dataset=Dataset.from_list(rows),
                      processing_class=tok, callbacks=list(callbacks))


# ---------------------------------------------------------------------------------------------------- 1. agreement
def check_loss_agreement(args: argparse.Namespace, ours, trl) -> dict[str, Any]:
    """Feed one TRL rollout batch (with perturbed old log-probs) to both losses; compare losses and gradients.

    Each trainer's forwards run under its own accelerator's autocast, as in its training step (bf16 or none).
    """
    import torch

    from latentrl.rl.batch import StepBatch
    from latentrl.rollout import Rollout

    ours_device, trl_device = ours.model.device, next(trl.model.parameters()).device
    if ours_device.type != trl_device.type:
        raise RuntimeError(f"the trainers sit on different devices (ours {ours_device}, TRL {trl_device}): "
                           "call use_device(args.device) before building them")
    G = args.num_generations
    prompts = ours.rows[: args.batch // G]
    trl.model.train()
    trl.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch per step here
    with trl.accelerator.autocast():
        inputs = trl._generate_and_score_completions([dict(r) for r in prompts for _ in range(G)])
    ids, cmask = inputs["completion_ids"], inputs["completion_mask"].bool()
    dev = ids.device
    if ids.shape[1] != args.completion_len or not bool(cmask.all()):
        raise RuntimeError(f"TRL completions are not all {args.completion_len} tokens (shape {tuple(ids.shape)})")
    gen = torch.Generator().manual_seed(args.seed + 1)
    # Vary the lengths (as if some rows had stopped early) so the four loss aggregations give different values:
    # each row keeps its first `length` tokens, the rest become padding outside the mask, for both trainers.
    L = ids.shape[1]
    lengths = torch.randint(max(1, L // 2), L + 1, (ids.shape[0],), generator=gen).to(dev)
    lengths[0] = L
    cmask = torch.arange(L, device=dev)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~cmask, trl._tokenizer.pad_token_id)
    inputs["completion_ids"], inputs["completion_mask"] = ids, cmask.to(inputs["completion_mask"].dtype)
    inputs["num_items_in_batch"] = cmask.sum()
    synthetic = not bool(inputs["advantages"].any())
    if synthetic:  # no reward signal (a large vocab rarely samples a digit): seeded advantages, fed to both alike
        inputs["advantages"] = torch.randn(ids.shape[0], generator=gen).to(dev, inputs["advantages"].dtype)
    # TRL's on-policy old log-probs are its current log-probs; perturb them so ratio != 1
    with torch.no_grad(), trl.accelerator.autocast():
        trl_lp, _, _ = trl._get_per_token_logps_and_entropies(
            trl.model, torch.cat([inputs["prompt_ids"], ids], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), ids.shape[1])
    old = trl_lp.float() + args.old_logprob_noise * torch.randn(trl_lp.shape, generator=gen).to(dev)
    inputs["old_per_token_logps"] = old

    rollout = Rollout(
        prompt_ids=inputs["prompt_ids"], prompt_mask=inputs["prompt_mask"].bool(), completion_ids=ids,
        completion_mask=cmask, latent_mask=torch.zeros_like(cmask), forced_mask=torch.zeros_like(cmask),
        logprobs=old.float(), truncated=lengths == L, payload={},
    )
    n = ids.shape[0]
    batch = StepBatch(rollout, [dict(r) for r in prompts for _ in range(G)], [""] * n, torch.zeros(n, device=dev),
                      inputs["advantages"].float())
    ours._prepare_for_update(batch)  # token advantages and (beta > 0) our reference replay
    out: dict[str, Any] = {"rows": n, "tokens": int(cmask.sum()), "prompt_tokens": int(inputs["prompt_ids"].shape[1]),
                           "synthetic_advantages": synthetic}
    if args.beta > 0:
        out["ref_logprob_max_abs_diff"] = float((batch.ref_logprobs - inputs["ref_per_token_logps"])[cmask].abs().max())
        batch.ref_logprobs = inputs["ref_per_token_logps"].float()  # identical inputs to both losses
        # (TRL scored the full-length rows; causal attention makes positions inside the mask identical)
    batch.old_logprobs = old.float()
    ratio = torch.exp(trl_lp - old)
    out["clipped_fraction"] = float(((ratio < 1 - args.epsilon) | (ratio > 1 + args.epsilon_high))[cmask].float().mean())

    trl_params = dict(trl.model.named_parameters())
    ours_params = dict(ours.model.model.named_parameters())
    per_type = {}
    base_args = ours.args
    for lt in LOSS_TYPES:
        trl.loss_type = lt
        ours.args = dataclasses.replace(base_args, loss_type=lt)
        for p in list(trl_params.values()) + list(ours_params.values()):
            p.grad = None
        with trl.accelerator.autocast():
            loss_trl = trl.compute_loss(trl.model, inputs)
        loss_trl.backward()
        with ours.accelerator.autocast():
            loss_ours, _ = ours.compute_loss(batch, num_sequences=n, num_tokens=float(ours.loss_mask(batch).sum()),
                                             num_micro=1)
        loss_ours.backward()
        grad_diff, grad_max = 0.0, 0.0
        for name, p in ours_params.items():
            q = trl_params[name]
            if p.grad is None or q.grad is None:
                if (p.grad is None) != (q.grad is None):
                    raise RuntimeError(f"{lt}: parameter {name} has a gradient in only one trainer")
                continue
            grad_diff = max(grad_diff, float((p.grad - q.grad).abs().max()))
            grad_max = max(grad_max, float(q.grad.abs().max()))
        lt_trl, lt_ours = loss_trl.item(), loss_ours.item()
        per_type[lt] = {"trl": lt_trl, "ours": lt_ours, "abs_diff": abs(lt_trl - lt_ours),
                        "grad_max_abs_diff": grad_diff, "grad_max_abs": grad_max}
    for p in list(trl_params.values()) + list(ours_params.values()):
        p.grad = None
    trl.loss_type, ours.args = args.loss_type, base_args
    trl._metrics = {"train": type(trl._metrics["train"])(list), "eval": type(trl._metrics["eval"])(list)}
    out["per_loss_type"] = per_type
    out["loss_max_abs_diff"] = max(v["abs_diff"] for v in per_type.values())
    out["grad_max_abs_diff"] = max(v["grad_max_abs_diff"] for v in per_type.values())
    return out


# ---------------------------------------------------------------------------------------------------- 2. timing
class _Profiler:
    """Accumulates cProfile over several start/stop windows; torch.profiler records the last window only."""

    def __init__(self, kind: str | None):
        self.kind, self.prof = kind, None

    def start(self) -> None:
        if self.kind == "cprofile":
            import cProfile
            self.prof = self.prof or cProfile.Profile()
            self.prof.enable()
        elif self.kind == "torch":
            from torch.profiler import ProfilerActivity, profile
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()

    def stop(self) -> None:
        if self.kind == "cprofile":
            self.prof.disable()
        elif self.kind == "torch":
            self.prof.__exit__(None, None, None)

    def report(self, title: str, top: int) -> None:
        if self.prof is None:
            return
        print(f"\n==== {title} ====")
        if self.kind == "cprofile":
            import pstats
            for key in ("cumulative", "tottime"):
                pstats.Stats(self.prof).sort_stats(key).print_stats(top)
        else:
            print(self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def time_steps(args: argparse.Namespace, folder: Path, tok, rows, out_dir: Path) -> dict[str, Any]:
    """TRL's own train() loop; after each of its steps a callback runs (and times) one step of ours.

    On CUDA every clock read follows a `torch.cuda.synchronize()`, and each trainer's peak allocated memory is
    read over its own steps (the peak counter is reset at each hand-over between the two trainers).
    """
    import torch
    from transformers import TrainerCallback

    from latentrl.rl.trainer import GRPOTrainer  # noqa: F401  (import cost outside the timed region)

    steps = args.warmup + args.repeats
    ours = build_ours(args, folder, tok, rows, out_dir)
    prof_ours = _Profiler(args.profile if not args.profile_trl else None)
    prof_trl = _Profiler(args.profile if args.profile_trl else None)
    rec: dict[str, list] = {"trl": [], "ours": [], "trl_threads": [], "ours_threads": [], "ours_metrics": [],
                            "trl_gpu_peak": [], "ours_gpu_peak": []}
    cuda = args.device == "cuda"

    def clock() -> tuple[float, float]:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def gpu_peak_mb() -> float | None:
        """Peak allocated MB since the last call (which resets the counter); None off CUDA."""
        if not cuda:
            return None
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak

    class Interleave(TrainerCallback):
        def __init__(self):
            self.last = None  # (wall, cpu) at the previous on_step_end, after ours ran

        def on_step_begin(self, targs, state, control, **kw):
            rec["trl_threads"].append(torch.get_num_threads())
            if state.global_step >= args.warmup:  # the step about to run (global_step + 1) is a timed one
                prof_trl.start()

        def on_step_end(self, targs, state, control, **kw):
            now = clock()
            rec["trl_gpu_peak"].append(gpu_peak_mb())
            if self.last is not None:
                rec["trl"].append((now[0] - self.last[0], now[1] - self.last[1]))
            timed = state.global_step > args.warmup
            if timed:
                prof_trl.stop()
            rec["ours_threads"].append(torch.get_num_threads())
            if timed:
                prof_ours.start()
            w0, c0 = clock()
            m = ours.train_step()
            w1, c1 = clock()
            rec["ours"].append((w1 - w0, c1 - c0))
            rec["ours_gpu_peak"].append(gpu_peak_mb())
            if timed:
                prof_ours.stop()
            rec["ours_metrics"].append(m)
            self.last = clock()

    trl = build_trl(args, folder, tok, rows, out_dir, max_steps=steps, callbacks=[Interleave()])
    trl.train()
    # rec["trl"][i] is TRL step i+2 (step 1 has no previous on_step_end); ours[i] is ours step i+1
    trl_t = rec["trl"][args.warmup - 1: args.warmup - 1 + args.repeats]
    ours_t = rec["ours"][args.warmup: args.warmup + args.repeats]
    prof_ours.report(f"{args.profile} of our {len(ours_t)} timed steps", args.profile_top)
    prof_trl.report(f"{args.profile} of TRL's {len(trl_t)} timed steps", args.profile_top)
    timed_metrics = rec["ours_metrics"][args.warmup:]
    lengths = [m["completions/mean_length"] for m in rec["ours_metrics"]]
    out = {"trl": trl_t, "ours": ours_t, "trl_threads": sorted(set(rec["trl_threads"])),
           "ours_threads": sorted(set(rec["ours_threads"])), "ours_mean_length": lengths,
           "ours_time_generation_s": [m["time/generation_s"] for m in timed_metrics],
           # the update: our step after its rollout and rewards (reference replay, loss, backward, clip, AdamW)
           "ours_update_s": [w - m["time/generation_s"] for (w, _), m in zip(ours_t, timed_metrics)]}
    if cuda:  # on_step_end i covers TRL step i+1 (from the end of our step i), ours[i] our step i+1
        out["trl_gpu_peak_mb"] = max(rec["trl_gpu_peak"][args.warmup:])
        out["ours_gpu_peak_mb"] = max(rec["ours_gpu_peak"][args.warmup:])
    return out


# ---------------------------------------------------------------------------------------------------- FLOPs
def _sig(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else float(f"{x:.{digits}g}")


def throughput(args: argparse.Namespace, folder: Path, prompt_tokens: int, t: dict[str, Any] | None) -> dict[str, Any]:
    """Tokens/s of both trainers, and our update's model FLOPs, TFLOP/s and MFU (None where not measured / known).

    Tokens per step = batch * (prompt + completion tokens), the same workload for both trainers. Update FLOPs
    (`benchmarks/flops.py`): reference replay (beta > 0) + 3 x the policy replay's forward, as our replay runs them.
    """
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    replay = flops.replay_forward_flops(cfg, args.batch, args.num_generations, prompt_tokens, args.completion_len)
    update = flops.update_flops(replay, replay if args.beta > 0 else 0)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else None
    peak = args.peak_tflops or flops.peak_tflops(device_name, args.dtype)
    tokens = args.batch * (prompt_tokens + args.completion_len)
    out: dict[str, Any] = {"tokens_per_step": tokens, "ours_update_flops": update, "peak_tflops": peak,
                           "device_name": device_name or "cpu", "non_embedding_params": flops.non_embedding_params(cfg),
                           "trl_tokens_per_s": None, "ours_tokens_per_s": None, "ours_update_s": None,
                           "ours_update_tflops": None, "ours_mfu": None}
    if t is None:
        return out
    trl_s, ours_s = (statistics.median(w for w, _ in t[k]) for k in ("trl", "ours"))
    update_s = statistics.median(t["ours_update_s"])
    tflops = update / update_s / 1e12
    out.update(trl_tokens_per_s=_sig(tokens / trl_s), ours_tokens_per_s=_sig(tokens / ours_s),
               ours_update_s=_sig(update_s), ours_update_tflops=_sig(tflops),
               ours_mfu=_sig(tflops / peak) if peak else None)
    if args.device == "cuda":
        out.update(trl_gpu_peak_mb=round(t["trl_gpu_peak_mb"], 1), ours_gpu_peak_mb=round(t["ours_gpu_peak_mb"], 1))
    return out


def throughput_line(f: dict[str, Any]) -> str:
    """One human line: tokens/s of both trainers, our update's TFLOP/s and MFU."""
    mfu = (f"MFU {100 * f['ours_mfu']:.1f}% of {f['peak_tflops']:g} TFLOP/s" if f["ours_mfu"] is not None
           else f"MFU not reported (no peak known for {f['device_name']}; pass --peak-tflops)")
    return (f"tokens/s (batch x (prompt + completion) / s per step): TRL {f['trl_tokens_per_s']:.1f}, ours "
            f"{f['ours_tokens_per_s']:.1f} | our update {f['ours_update_s']:.3f} s, {f['ours_update_flops'] / 1e12:.4g} "
            f"TFLOP -> {f['ours_update_tflops']:.4g} TFLOP/s, {mfu}")


# ---------------------------------------------------------------------------------------------------- driver
def use_device(device: str) -> None:
    """Both trainers' accelerate state on `device`: on the CPU even where a GPU is visible (accelerate and TRL's
    TrainingArguments both read ACCELERATE_USE_CPU), on the GPU only if nothing in the environment forces the CPU."""
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    else:
        os.environ.pop("ACCELERATE_USE_CPU", None)


def run_check(args: argparse.Namespace, folder: Path, tok, rows, out_dir: Path) -> dict[str, Any]:
    use_device(args.device)
    ours = build_ours(args, folder, tok, rows, out_dir)
    trl = build_trl(args, folder, tok, rows, out_dir, max_steps=1)
    return check_loss_agreement(args, ours, trl)


def main(argv=None) -> dict[str, Any]:
    from latentrl.cpu_allocator import tune_glibc_malloc

    tune_glibc_malloc()  # TRL's trainer and ours run in this one process: both get it
    args = parse_args(argv)
    use_device(args.device)
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import trl as trl_pkg

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="trainer_vs_trl_") as tmp:
        tmp_path = Path(tmp)
        folder = tmp_path / "model"
        tok = save_tiny_model(args, folder)
        G = args.num_generations
        rows = make_rows(args, max(64, (args.warmup + args.repeats + 2) * args.batch // G))
        check = run_check(args, folder, tok, rows, tmp_path)
        if check["prompt_tokens"] != args.prompt_len:
            raise RuntimeError(f"TRL's prompts are {check['prompt_tokens']} tokens, not --prompt-len {args.prompt_len}")
        print(f"trainer_vs_trl: {args.arch} {args.preset or 'custom'} hidden={args.hidden} layers={args.layers} "
              f"heads={args.heads}/{args.kv_heads}kv mlp={args.intermediate} vocab={len(tok)} | {args.device} "
              f"{args.dtype} | batch={args.batch} G={G} prompt={args.prompt_len} L={args.completion_len} | "
              f"loss={args.loss_type} beta={args.beta} eps={args.epsilon}/{args.epsilon_high} | "
              f"threads={torch.get_num_threads()} | trl {trl_pkg.__version__}")
        print(f"loss agreement on one TRL rollout batch ({check['rows']} rows, {check['tokens']} tokens, "
              f"{100 * check['clipped_fraction']:.0f}% of ratios outside the clip range"
              f"{'; all rewards equal, so seeded random advantages' if check['synthetic_advantages'] else ''}):")
        for lt, v in check["per_loss_type"].items():
            print(f"  {lt:<8} trl {v['trl']:+.7f}  ours {v['ours']:+.7f}  |diff| {v['abs_diff']:.2e}  "
                  f"max|grad diff| {v['grad_max_abs_diff']:.2e} (max|grad| {v['grad_max_abs']:.2e})")
        if "ref_logprob_max_abs_diff" in check:
            print(f"  reference log-probs, our replay vs TRL: max |diff| {check['ref_logprob_max_abs_diff']:.2e}")
        out: dict[str, Any] = {"loss_max_abs_diff": check["loss_max_abs_diff"],
                               "grad_max_abs_diff": check["grad_max_abs_diff"],
                               "ref_logprob_max_abs_diff": check.get("ref_logprob_max_abs_diff"),
                               "loss_check": check["per_loss_type"],
                               "synthetic_advantages": check["synthetic_advantages"]}
        if args.check_only:
            out.update(trl_s_per_step=None, ours_s_per_step=None, speedup=None)
            out.update(throughput(args, folder, args.prompt_len, None))
        else:
            t = time_steps(args, folder, tok, rows, tmp_path)
            med = {k: statistics.median(w for w, _ in t[k]) for k in ("trl", "ours")}
            cpu = {k: statistics.median(c for _, c in t[k]) for k in ("trl", "ours")}
            print(f"\n{'trainer':<8}{'median s':>10}{'min s':>9}{'max s':>9}{'cpu s':>9}   ({args.repeats} steps after "
                  f"{args.warmup} warm-up, interleaved; load avg {load0:.1f} -> {os.getloadavg()[0]:.1f})")
            for k in ("trl", "ours"):
                ws = [w for w, _ in t[k]]
                print(f"{k:<8}{med[k]:>10.3f}{min(ws):>9.3f}{max(ws):>9.3f}{cpu[k]:>9.3f}")
            print(f"speedup (TRL / ours): wall {med['trl'] / med['ours']:.2f}x, cpu {cpu['trl'] / cpu['ours']:.2f}x")
            # seconds to 4 significant figures, not 4 decimals: a 0.02 s step keeps its precision (tokens/s agrees)
            out.update(trl_s_per_step=_sig(med["trl"], 4), ours_s_per_step=_sig(med["ours"], 4),
                       speedup=round(med["trl"] / med["ours"], 3),
                       trl_cpu_s_per_step=_sig(cpu["trl"], 4), ours_cpu_s_per_step=_sig(cpu["ours"], 4),
                       speedup_cpu=round(cpu["trl"] / cpu["ours"], 3),
                       trl_times_s=[round(w, 4) for w, _ in t["trl"]],
                       ours_times_s=[round(w, 4) for w, _ in t["ours"]],
                       ours_generation_s=[round(x, 4) for x in t["ours_time_generation_s"]],
                       threads={"trl": t["trl_threads"], "ours": t["ours_threads"]},
                       ours_completion_mean_length=t["ours_mean_length"])
            figures = throughput(args, folder, args.prompt_len, t)
            out.update(figures)
            print(throughput_line(figures))
        out["loadavg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        out["versions"] = {"trl": trl_pkg.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__}
        out["config"] = config_dict(args)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
