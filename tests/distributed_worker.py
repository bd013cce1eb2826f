"""One rank of the data-parallel runs that tests/test_distributed.py compares with a single process.

Launched as `python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT PARALLELISM RUN...`
(PARALLELISM: ddp or fsdp); each rank writes OUT/<run>-rank<k>.pt. The test imports `run` for the single-process
reference, so both sides share every setting but the batch split and the parallelism.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.tensor import DTensor

from latentrl.config import GRPOConfig, LatentConfig
from latentrl.data import make_examples, task_vocabulary
from latentrl.rl.distributed import end_process_group
from latentrl.rl.trainer import GRPOTrainer
from latentrl.testing import tiny_latent_model, word_count_reward

GLOBAL_MICRO_BATCHES = 4  # x per_device_train_batch_size 3 = 12 completions = 3 groups of 4 per step
RUNS = {
    # token-mean loss (global num_tokens), KL to a reference, two updates per batch (old log-probs replayed)
    "grpo": dict(method="grpo", loss_type="dapo", beta=0.04, num_iterations=2),
    # a latent method: HRPO's gated hybrid inputs (side module + operator), on-policy REINFORCE; DAPO dynamic
    # sampling (zero-std groups dropped and refilled: refill rounds, possibly uneven process slices)
    "hrpo": dict(method="hrpo", temperature=1.0, beta=0.005, policy_loss="reinforce", loss_type="grpo",
                 dynamic_sampling=True, max_resample_rounds=1,
                 latent=LatentConfig(operator="hrpo_gate", answer_delimiter="####", latent_temperature=1.0)),
    # bf16 autocast (the GPU setting users shard with): rollout and update matmuls in bf16, fp32 weights and sums;
    # one step, so both sides sample from the same weights
    "grpo_bf16": dict(method="grpo", loss_type="dapo", beta=0.04, num_iterations=2, mixed_precision="bf16",
                      max_steps=1),
}


def some_groups_constant(prompts, completions, **kw):
    """Constant 1 for prompts with an even digit sum (zero-std groups that dynamic sampling drops), else varied."""
    odd = [sum(int(t) for t in p.split() if t.isdigit()) % 2 for p in prompts]
    return [float(len(c.split()) % 3) if o else 1.0 for o, c in zip(odd, completions)]


REWARDS = {"grpo": word_count_reward, "hrpo": some_groups_constant, "grpo_bf16": word_count_reward}


def config(out: Path, world: int, name: str, parallelism: str = "ddp", **kw) -> GRPOConfig:
    base = dict(model_name_or_path="tiny", output_dir=str(out), max_steps=2, per_device_train_batch_size=3,
                parallelism=parallelism,
                gradient_accumulation_steps=GLOBAL_MICRO_BATCHES // world, num_generations=4, rollout_chunk_size=3,
                max_completion_length=8, learning_rate=1e-2, save_steps=0, report_to=["none"], seed=0)
    base.update(RUNS[name])
    if parallelism == "fsdp":
        base.update(FSDP_EXTRA.get(name, {}))
    base.update(kw)
    return GRPOConfig(**base)


def flat_params(trainer: GRPOTrainer) -> torch.Tensor:
    """Every parameter, flattened in `parameters()` order (full tensors: FSDP shards are gathered)."""
    full = lambda p: p.full_tensor() if isinstance(p, DTensor) else p  # noqa: E731
    return torch.cat([full(p.detach()).flatten() for p in trainer.model.parameters()])


def shard_sizes(trainer: GRPOTrainer) -> dict[str, tuple[int, int]]:
    """Parameter name -> (elements this process holds, elements of the full parameter)."""
    local = lambda p: p.to_local().numel() if isinstance(p, DTensor) else p.numel()  # noqa: E731
    return {n: (local(p), p.numel()) for n, p in trainer.model.named_parameters()}


#: fsdp runs also recompute activations in the backward pass (HF gradient checkpointing inside FSDP's layer units)
FSDP_EXTRA = {"hrpo": dict(gradient_checkpointing=True)}
RESUMED = ("grpo",)  # runs that are also trained as 1 step + resume from its checkpoint (multi-process resume)


def run_coconut(out: Path, world: int) -> dict:
    """Coconut curriculum SFT, gated (every stage passes after 2 gate evaluations), with a linear probe head and
    uniform_prob draws: 16 problems, a global batch of 8 = 4 micro-batches of 2, split over the processes;
    a checkpoint after every step (written by the main process); per-step losses and the final weights."""
    from latentrl.sft.coconut import CoconutConfig, train_coconut

    data = make_examples("chain_sum", 16, seed=0, length=3)
    cfg = CoconutConfig(max_latent_stage=2, start_stage=1, stage_advance="converged", final_stage=3,
                        gate_threshold=0.0, gate_patience=2, gate_eval_steps=1, per_device_train_batch_size=2,
                        gradient_accumulation_steps=GLOBAL_MICRO_BATCHES // world, learning_rate=1e-2,
                        uniform_prob=0.3, probe_head_tokens=[[-2]], logging_steps=1, eval_strategy="no",
                        output_dir=str(out / "coconut"), save_steps=1, disable_tqdm=True, seed=0)
    model = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    hist = train_coconut(cfg, model, data, gate_examples=data[:4])
    from accelerate.state import PartialState

    state = PartialState()
    return {"metrics": [{k: r[k] for k in ("step", "loss", "token_accuracy", "probe_head_loss")} for r in hist.train],
            "stage_log": hist.stage_log,
            "params": torch.cat([p.detach().flatten() for p in model.model.parameters()]),
            "rank": state.process_index, "world": state.num_processes}


def run_step_sft(name: str, out: Path, world: int) -> dict:
    """CoT SFT or superposition SFT: 16 problems, a global batch of 8 (per_device 8 // world), 3 steps, a
    checkpoint after every step (written by the main process); per-step metrics and the final weights."""
    from accelerate.state import PartialState

    from latentrl.sft.cot import CoTSFTConfig, train_sft
    from latentrl.sft.superposition import SuperpositionSFTConfig, train_superposition_sft

    data = make_examples("chain_sum", 16, seed=0, length=3)
    common = dict(per_device_train_batch_size=8 // world, max_steps=3, learning_rate=1e-2, warmup_steps=0,
                  logging_steps=1, output_dir=str(out / name), save_steps=1, disable_tqdm=True, seed=0)
    model = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    if name == "cot":
        hist = train_sft(CoTSFTConfig(mode="cot", eval_steps=0, **common), model, data)
    else:
        hist = train_superposition_sft(SuperpositionSFTConfig(top_k=2, **common), model, data)
    state = PartialState()
    return {"metrics": [{k: v for k, v in r.items() if k not in ("train_wall_s",)} for r in hist.train],
            "params": torch.cat([p.detach().flatten() for p in model.model.parameters()]),
            "rank": state.process_index, "world": state.num_processes}


def run(name: str, out: Path, world: int, parallelism: str = "ddp") -> dict:
    """max_steps (2 unless the run says) in one go (and for RESUMED runs, 1 step + resume); losses, rewards, final weights. The 1-step run's
    checkpoint stays in OUT/<run>/resumed/checkpoint-1."""
    if name == "coconut":
        return run_coconut(out, world)
    if name in ("cot", "superposition"):
        return run_step_sft(name, out, world)
    words = task_vocabulary("chain_sum")
    data = make_examples("chain_sum", 16, seed=0, length=3)
    t = GRPOTrainer(config(out / name / "full", world, name, parallelism),
                    tiny_latent_model("qwen2", words, seed=0, hidden=32), data, reward_funcs=[REWARDS[name]])
    hist = t.train()
    keys = ("loss", "reward", "grad_norm", "kl", "entropy", "dynamic_sampling/kept_groups")
    res = {"metrics": [{k: m[k] for k in keys if k in m} for m in hist], "params": flat_params(t),
           "rank": t.dp.rank, "world": t.dp.world_size, "shards": shard_sizes(t)}
    if name in RESUMED:
        res["resumed_params"] = resume(name, out, world, parallelism, out / name / "resumed")
    return res


def fsdp_refusals(out: Path, world: int) -> dict[str, str]:
    """ConfigError messages of what parallelism='fsdp' refuses (LoRA, method dlr, latent_rl's value-head
    pretraining), '' where nothing was raised."""
    from latentrl.config import ConfigError, LoraConfig
    from latentrl.methods.dlr.trainer import DLRTrainer

    words = task_vocabulary("chain_sum")
    data = make_examples("chain_sum", 16, seed=0, length=3)
    cases = {
        "lora": lambda: GRPOTrainer(config(out / "lora", world, "grpo", "fsdp", lora=LoraConfig(enabled=True)),
                                    tiny_latent_model("qwen2", words, seed=0, hidden=32), data,
                                    reward_funcs=[word_count_reward]),
        "dlr": lambda: DLRTrainer(config(out / "dlr", world, "grpo", "fsdp", method="dlr", beta=0.0,
                                         num_iterations=1, max_completion_length=12),
                                  tiny_latent_model("qwen2", words, seed=0, hidden=32), data,
                                  reward_funcs=[word_count_reward]),
        "latent_rl": lambda: GRPOTrainer(
            GRPOConfig.for_method("latent_rl", model_name_or_path="tiny", output_dir=str(out / "latent_rl"),
                                  parallelism="fsdp", per_device_train_batch_size=2, num_generations=4,
                                  max_completion_length=8, beta=0.0, report_to=["none"]),
            tiny_latent_model("qwen2", words, seed=0, hidden=32), data, reward_funcs=[word_count_reward]),
    }
    found = {}
    for key, build in cases.items():
        try:
            build()
            found[key] = ""
        except ConfigError as e:
            found[key] = str(e)
    return found


def resume(name: str, out: Path, world: int, parallelism: str, half: Path) -> torch.Tensor:
    """Weights after step 2 when step 1's checkpoint in `half` (written by `run`, or here if absent) is resumed."""
    words = task_vocabulary("chain_sum")
    data = make_examples("chain_sum", 16, seed=0, length=3)
    if not (half / "checkpoint-1").exists():
        GRPOTrainer(config(half, world, name, parallelism, max_steps=1),
                    tiny_latent_model("qwen2", words, seed=0, hidden=32), data, reward_funcs=[REWARDS[name]]).train()
    r = GRPOTrainer(config(half, world, name, parallelism), tiny_latent_model("qwen2", words, seed=0, hidden=32),
                    data, reward_funcs=[REWARDS[name]])
    r.train(resume_from_checkpoint=str(half / "checkpoint-1"))
    return flat_params(r)


@record  # a failing rank's traceback goes into torchrun's closing summary, the last lines of the launch log
def main() -> None:
    torch.set_num_threads(1)
    out, parallelism = Path(sys.argv[1]), sys.argv[2]
    for name in sys.argv[3:]:
        res = run(name, out, world=int(os.environ.get("WORLD_SIZE", "1")), parallelism=parallelism)
        torch.save(res, out / f"{name}-rank{res['rank']}.pt")
    if parallelism == "fsdp":
        rank = int(os.environ.get("RANK", "0"))
        torch.save(fsdp_refusals(out / "refused", world=2), out / f"refusals-rank{rank}.pt")
    end_process_group()
    # Even after the teardown, a gloo rank can abort in interpreter finalization ("terminate called without an
    # active exception", no Python frame; CI 2026-12-04, under load, after every result was written): the results
    # are on disk and the group is gone, so leave without running the C++ static destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
