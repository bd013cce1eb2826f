"""The Coconut curriculum SFT loop: stages by epoch or by convergence (the stage gate), logging, evaluation."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentrl.data.schema import Example
from latentrl.model import LatentModel
from latentrl.sft.coconut.config import IGNORE_INDEX, CoconutConfig, stage_of_epoch
from latentrl.sft.coconut.data import (
    CoconutSample,
    TokenizedExample,
    _latent_ids,
    build_stage_sample,
    stage_samples,
    tokenize_example,
)
from latentrl.sft.coconut.distill import load_teacher
from latentrl.sft.coconut.forward import coconut_forward, collate_coconut
from latentrl.sft.coconut.inference import coconut_evaluate
from latentrl.sft.loop import Checkpoints, RunMetrics, launch, make_adamw, my_share, optimizer_step
from latentrl.thoughts.hidden_state import ensure_thought_projection


@dataclasses.dataclass
class CoconutHistory:
    """What `train_coconut` returns: logged training records, eval records (one per stage/epoch), the final eval."""

    train: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    eval: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    final_eval: dict[str, Any] | None = None
    stages: list[int] = dataclasses.field(default_factory=list)  # scheduled stage of each trained epoch
    optimizer_resets: list[int] = dataclasses.field(default_factory=list)  # global step at which AdamW was re-made
    gate: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # converged mode: every gate evaluation
    stage_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # converged mode: one per stage
    steps: int = 0
    wall_s: float = 0.0
    train_wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _eval_budget(cfg: CoconutConfig, tokenized: Sequence[TokenizedExample]) -> int:
    """Thoughts + end marker + the longest remaining target of any stage (stage 0 = all steps) + 8."""
    longest = max((sum(len(s) for s in t.steps) + len(t.answer) for t in tokenized), default=1)
    most = cfg.thoughts_for(max(cfg.max_latent_stage, 0))
    return most + 1 + longest + 8


def train_coconut(
    config: CoconutConfig,
    model: LatentModel,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example] = (),
    gate_examples: Sequence[Example] | None = None,
) -> CoconutHistory:
    """Coconut curriculum SFT of `model` in place; greedy Pass@1 on `eval_examples` per stage (or epoch).

    `stage_advance=fixed` (the authors'): epochs run from `start_epoch` to `num_epochs - 1`; epoch e trains stage
    `e // epochs_per_stage`. `stage_advance=converged`: stages run from `start_stage` to `last_stage`, each until
    the `StageGate` on `gate_examples` (default: the eval examples) says it is learned or its step cap is reached;
    every stage's data is rebuilt (and reshuffled) per pass over it. AdamW is re-created per `reset_optimizer`.
    Metrics (loss, token accuracy, thought norm, forwards per step, stage, eval Pass@1 / eval loss, gate metrics and
    one `stage/*` record per finished stage: steps taken, gate metric, reason) go to `output_dir/metrics.jsonl`
    when set, and always into the returned history. `save_steps` writes resumable checkpoints;
    `resume_from_checkpoint` loads one into `model` and continues exactly where it was saved.
    """
    from latentrl.logger import progress

    if not train_examples:
        raise ValueError("train_coconut needs at least one training example")
    cfg = config
    dp = launch(cfg, model)  # LoRA, precision, one process or every process of a launch
    if cfg.thought_projection:  # before the checkpoint is loaded and the optimizer built
        ensure_thought_projection(model)
    teacher: LatentModel | None = None
    if cfg.distill_weight > 0:  # the frozen CoT teacher of the hidden-state distillation (before the run folder)
        teacher = load_teacher(cfg.distill_teacher, model)
    converged = cfg.stage_advance == "converged"
    t_start = time.perf_counter()
    tok = model.tokenizer
    latent_ids = model.latent_ids
    _latent_ids(latent_ids)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_tok = [tokenize_example(tok, ex) for ex in train_examples]
    eval_examples = list(eval_examples)
    eval_tok = [tokenize_example(tok, ex) for ex in eval_examples]
    gate_source = list(gate_examples) if gate_examples is not None else eval_examples
    gate_tok = [tokenize_example(tok, ex) for ex in gate_source[: cfg.gate_num_examples]]
    if converged and not gate_tok:
        raise ValueError("stage_advance=converged needs gate examples (gate_examples or eval_examples) to measure "
                         "when a stage is learned")
    budget = cfg.max_new_positions or _eval_budget(cfg, train_tok + eval_tok)
    # the run folder is taken only once the inputs are known good (a refused input never leaves it locked)
    checkpoints = Checkpoints(cfg, model, dp)  # checks the run folder; a resumed run's weights are loaded here

    torch.manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    step_size = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * dp.world_size  # the global batch
    steps_per_epoch = math.ceil(len(train_tok) / step_size)
    if converged:
        stages = list(range(cfg.start_stage, cfg.last_stage + 1))
        total_steps = len(stages) * cfg.max_steps_per_stage
    else:
        epochs = list(range(cfg.start_epoch, cfg.num_epochs))
        total_steps = len(epochs) * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    history = CoconutHistory()
    state = {"step": 0, "train_time": 0.0}
    resume = checkpoints.state  # where a resumed run picks up (None: a new run)
    if resume is not None:
        history = CoconutHistory(**resume["history"])
        state = {"step": resume["step"], "train_time": resume["train_time"]}
    metrics = RunMetrics(cfg, resume_step=checkpoints.resume_step, write=dp.is_main)
    dp.barrier()  # the main process has replaced an earlier run (overwrite_output_dir) before anyone goes on
    log = metrics.log

    def do_eval(step: int, stage: int, epoch: int) -> dict[str, Any] | None:
        if not eval_examples:
            return None
        ev = coconut_evaluate(model, eval_examples, cfg, stage, max_new_positions=budget)
        ev_loss = _eval_loss(model, eval_tok, stage, cfg, latent_ids, pad_id)
        log(step, {"eval/pass_at_1": ev["pass_at_1"], "eval/mean_reasoning_positions": ev["mean_reasoning_positions"],
                   "eval/mean_latent_positions": ev["mean_latent_positions"], "eval/loss": ev_loss,
                   "eval/wall_s": ev["wall_s"], "stage": stage, "epoch": epoch}, history.eval)
        model.train()
        return ev

    optimizer: torch.optim.Optimizer | None = None
    probe_heads: nn.Module | None = None
    if cfg.probe_head_tokens:  # training-only linear probe heads (seeded by cfg.seed above; never saved)
        probe_heads = nn.Linear(model.hidden_size, cfg.num_probe_heads * model.vocab_size).to(model.device)
    params = [p for p in model.parameters() if p.requires_grad]
    head_params = list(probe_heads.parameters()) if probe_heads is not None else []
    dp.broadcast_parameters([*model.parameters(), *head_params])  # identical replicas, whatever each process loaded
    window: dict[str, float] = {"loss": 0.0, "token_accuracy": 0.0, "thought_norm": 0.0, "forwards": 0.0, "n": 0,
                                "probe_loss": 0.0, "probe_accuracy": 0.0, "probe_n": 0.0,
                                "probe_head_loss": 0.0, "probe_head_accuracy": 0.0, "probe_head_n": 0.0}
    if resume is not None:
        window = dict(resume["window"])
    gate = cfg.make_gate() if converged else None
    epoch_order_state = order_gen.get_state()  # the data-order generator at the start of the current pass
    bar = progress(total_steps, "coconut" + ("" if cfg.bptt else "[no-bptt]"), disable=cfg.disable_tqdm)
    bar.update(state["step"])

    def out_of_budget() -> bool:
        return cfg.max_steps is not None and state["step"] >= cfg.max_steps

    def epoch_batches(stage: int, epoch: int) -> tuple[list[CoconutSample], list[list[int]]]:
        nonlocal epoch_order_state
        epoch_order_state = order_gen.get_state()
        samples = stage_samples(train_tok, stage, cfg, latent_ids, epoch)
        too_long = [i for i, s in enumerate(samples) if len(s.input_ids) > cfg.max_length]
        if too_long:
            i = too_long[0]
            raise ValueError(f"training example {i} has {len(samples[i].input_ids)} tokens at stage {stage}, more "
                             f"than max_length={cfg.max_length}; raise max_length")
        perm = torch.randperm(len(samples), generator=order_gen).tolist()
        return samples, [perm[s0 : s0 + step_size] for s0 in range(0, len(perm), step_size)]

    def train_step(samples: list[CoconutSample], idx: list[int], stage: int, epoch: int) -> None:
        nonlocal window
        t0 = time.perf_counter()
        # the step's micro-batches, every one collated on every process (the loss normaliser is the whole step's
        # token count); process k trains on the k-th contiguous run of them, then the gradients are summed
        micro = [idx[m : m + cfg.per_device_train_batch_size] for m in range(0, len(idx), cfg.per_device_train_batch_size)]
        batches = [collate_coconut([samples[i] for i in mb], pad_id) for mb in micro]
        n_tokens = float(sum(int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in batches))
        optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "token_accuracy": 0.0, "thought_norm": 0.0, "forwards": 0.0}
        for b in my_share(dp, batches):
            with dp.accelerator.autocast():
                out = coconut_forward(model, b.to(model.device), bptt=cfg.bptt, normalizer=n_tokens,
                                      probe_weight=cfg.probe_weight if (cfg.probe_tokens or probe_heads) else 0.0,
                                      probe_heads=probe_heads, teacher=teacher, distill_weight=cfg.distill_weight)
            out.loss.backward()
            for name, value, acc in (("probe_head", out.probe_head_loss, out.probe_head_accuracy),
                                     ("probe", out.probe_loss, out.probe_accuracy)):
                if not math.isnan(value):
                    sums[f"{name}_loss"] = sums.get(f"{name}_loss", 0.0) + value / len(batches)
                    sums[f"{name}_accuracy"] = sums.get(f"{name}_accuracy", 0.0) + acc / len(batches)
                    sums[f"{name}_n"] = sums.get(f"{name}_n", 0.0) + 1 / len(batches)
            if not math.isnan(out.distill_loss):
                sums["distill_loss"] = sums.get("distill_loss", 0.0) + out.distill_loss / len(batches)
                sums["distill_n"] = sums.get("distill_n", 0.0) + 1 / len(batches)
            sums["loss"] += float(out.loss.detach())
            sums["token_accuracy"] += out.token_accuracy * out.num_tokens / n_tokens
            sums["thought_norm"] += out.thought_norm / len(batches)
            sums["forwards"] += out.num_forwards
        sums = dp.sum_floats(sums)
        dp.sum_gradients(params + head_params)
        # the probe heads are clipped with the model; without clipping the logged norm is the model's alone, as before
        grad_norm, lr = optimizer_step(optimizer, params + head_params if cfg.max_grad_norm > 0 else params,
                                       cfg.max_grad_norm)
        state["step"] += 1
        step = state["step"]
        state["train_time"] += time.perf_counter() - t0
        for key, val in sums.items():
            window[key] = window.get(key, 0.0) + val
        window["n"] += 1
        if step % cfg.logging_steps == 0 or step == total_steps:
            n = window["n"]
            record = {"loss": window["loss"] / n, "token_accuracy": window["token_accuracy"] / n,
                      "latent/norm_mean": window["thought_norm"] / n, "forwards_per_step": window["forwards"] / n,
                      "stage": stage, "epoch": epoch, "learning_rate": lr,
                      "grad_norm": grad_norm, "train_wall_s": state["train_time"]}
            if window["probe_n"] > 0:
                record["probe_loss"] = window["probe_loss"] / window["probe_n"]
                record["probe_accuracy"] = window["probe_accuracy"] / window["probe_n"]
            if window["probe_head_n"] > 0:
                record["probe_head_loss"] = window["probe_head_loss"] / window["probe_head_n"]
                record["probe_head_accuracy"] = window["probe_head_accuracy"] / window["probe_head_n"]
            if window.get("distill_n", 0.0) > 0:
                record["distill_loss"] = window["distill_loss"] / window["distill_n"]
            log(step, record, history.train)
            bar.set_postfix(stage=stage, loss=f"{record['loss']:.3f}")
            window = {k: 0.0 for k in window}
            window["n"] = 0
        bar.update(1)

    def new_optimizer(restore: bool = False) -> None:
        """A fresh AdamW (logged as a reset), or with `restore` the resumed checkpoint's AdamW, probe heads, RNG
        states and data order (the generator as it was when the checkpoint's pass over the data began)."""
        nonlocal optimizer
        optimizer = make_adamw(params, cfg)
        if head_params:
            optimizer.add_param_group({"params": head_params})
        if not restore:
            history.optimizer_resets.append(state["step"])
            return
        saved = checkpoints.restore(optimizer)
        if probe_heads is not None:
            probe_heads.load_state_dict(saved["probe_heads"])
        order_gen.set_state(saved["epoch_order_state"])

    saved_at = -1

    def save(stage: int, epoch: int, batch: int, stage_start: int, force: bool = False) -> None:
        """A resumable checkpoint (every save_steps steps; `force`: now): `batch` batches of pass `epoch` done.
        Called after each step but a pass's last, and at the start of each pass (batch 0: after the previous
        stage's record and evaluation, the next stage's fresh optimizer and gate), so a step that ends a pass or a
        stage is saved once, with everything logged after it; and forced when `max_steps` stops the run, so a
        time-boxed run can be continued with a larger budget."""
        nonlocal saved_at
        if (not cfg.save_steps or state["step"] in (0, saved_at)
                or (state["step"] % cfg.save_steps and not force)):
            return
        saved_at = state["step"]
        extra: dict[str, Any] = {
            "stage": stage, "epoch": epoch, "batch": batch, "stage_start": stage_start,
            "gate_streak": gate.streak if gate is not None else 0, "train_time": state["train_time"],
            "window": dict(window), "history": history.to_dict(), "epoch_order_state": epoch_order_state,
        }
        if probe_heads is not None:
            extra["probe_heads"] = probe_heads.state_dict()
        checkpoints.save(state["step"], optimizer, extra=extra, force=force)

    def resumed_pass(stage: int, epoch: int) -> tuple[list[CoconutSample], list[list[int]], int]:
        """The checkpoint's pass over the data, redrawn in the same order, and how many of its batches are done."""
        samples, steps = epoch_batches(stage, epoch)
        return samples, steps, resume["batch"]

    last_stage, last_epoch = cfg.start_stage, cfg.start_epoch
    try:
        model.train()
        if not converged:
            for epoch in epochs:
                if out_of_budget():
                    break
                if resume is not None and epoch < resume["epoch"]:
                    continue  # trained before the checkpoint
                stage = stage_of_epoch(cfg, epoch)
                last_stage, last_epoch = stage, epoch
                if resume is not None:
                    new_optimizer(restore=True)
                    samples, steps, done = resumed_pass(stage, epoch)
                    resume = None
                else:
                    new_stage = not history.stages or stage != history.stages[-1]
                    history.stages.append(stage)
                    if (optimizer is None or cfg.reset_optimizer == "epoch"
                            or (cfg.reset_optimizer == "stage" and new_stage)):
                        new_optimizer()
                    samples, steps = epoch_batches(stage, epoch)
                    done = 0
                    save(stage, epoch, 0, 0)
                trained = done
                for b in range(done, len(steps)):
                    if out_of_budget():
                        break
                    train_step(samples, steps[b], stage, epoch)
                    trained = b + 1
                    if trained < len(steps):
                        save(stage, epoch, trained, 0)
                if out_of_budget():
                    save(stage, epoch, trained, 0, force=True)
                last_epoch_of_stage = epoch == epochs[-1] or stage_of_epoch(cfg, epoch + 1) != stage
                if not out_of_budget() and (cfg.eval_strategy == "epoch"
                                            or (cfg.eval_strategy == "stage" and last_epoch_of_stage)):
                    if epoch != epochs[-1]:  # the final evaluation below covers the last epoch
                        do_eval(state["step"], stage, epoch)
        else:
            epoch = 0  # passes over the data, counted across stages (seeds the data order / uniform_prob draws)
            for stage in stages:
                if out_of_budget():
                    break
                if resume is not None and stage < resume["stage"]:
                    continue  # trained before the checkpoint
                gate.start_stage()
                if resume is not None:
                    new_optimizer(restore=True)
                    gate.streak, stage_start, epoch = resume["gate_streak"], resume["stage_start"], resume["epoch"]
                elif optimizer is None or cfg.reset_optimizer in ("stage", "epoch"):
                    new_optimizer()
                    stage_start = state["step"]
                else:
                    stage_start = state["step"]
                last_stage, decision = stage, None
                while decision is None and not out_of_budget():
                    last_epoch = epoch
                    if resume is not None:
                        samples, steps, done = resumed_pass(stage, epoch)
                        resume = None
                    else:
                        history.stages.append(stage)
                        if optimizer is not None and cfg.reset_optimizer == "epoch" and state["step"] > stage_start:
                            new_optimizer()
                        samples, steps = epoch_batches(stage, epoch)
                        done = 0
                        save(stage, epoch, 0, stage_start)
                    trained = done
                    for b in range(done, len(steps)):
                        if out_of_budget():
                            break
                        train_step(samples, steps[b], stage, epoch)
                        trained = b + 1
                        taken = state["step"] - stage_start
                        if taken % cfg.gate_eval_steps == 0 or gate.out_of_steps(taken):
                            with dp.accelerator.autocast():
                                gm = coconut_gate_metrics(model, gate_tok, stage, cfg, latent_ids, pad_id)
                            d = gate.update(taken, gm[cfg.gate_metric])
                            log(state["step"], {**{f"gate/{k}": v for k, v in gm.items()}, "gate/passed": d.passed,
                                                "gate/streak": d.streak, "stage": stage, "epoch": epoch},
                                history.gate)
                            model.train()
                            if d.advance:
                                decision = d
                                break
                        if trained < len(steps):
                            save(stage, epoch, trained, stage_start)
                    if out_of_budget() and decision is None:
                        save(stage, epoch, trained, stage_start, force=True)
                    epoch += 1
                taken = state["step"] - stage_start
                reason = decision.reason if decision is not None else "max_steps_total"
                value = decision.value if decision is not None else float("nan")
                log(state["step"], {"stage/index": stage, "stage/steps": taken, "stage/gate_metric": cfg.gate_metric,
                                    "stage/gate_value": value, "stage/reason": reason}, history.stage_log)
                if cfg.eval_strategy in ("stage", "epoch") and stage != stages[-1] and not out_of_budget():
                    do_eval(state["step"], stage, last_epoch)
        history.steps = state["step"]
        history.train_wall_s = state["train_time"]
        history.final_eval = do_eval(state["step"], last_stage, last_epoch)
    finally:
        bar.close()
        model.eval()
        metrics.close()
        checkpoints.close()
    history.wall_s = time.perf_counter() - t_start
    return history


def _teacher_forced(cfg: CoconutConfig) -> CoconutConfig:
    """The options gate and eval samples are built with: the scheduled stage only (no uniform_prob draws) and no
    distillation teacher rows (they score the student alone)."""
    return dataclasses.replace(cfg, uniform_prob=0.0, distill_weight=0.0)


def _first_segment(tok: TokenizedExample, stage: int, cfg: CoconutConfig) -> list[int]:
    """The gate's target after the thoughts at `stage`: the next `gate_next_steps` language steps, the answer (+ eos)
    counting as the last one."""
    n_skip = len(tok.steps) if stage > cfg.max_latent_stage else min(stage, len(tok.steps))
    segments = [*tok.steps[n_skip:], tok.answer][: cfg.gate_next_steps]
    return [t for seg in segments for t in seg]


@torch.no_grad()
def coconut_gate_metrics(model: LatentModel, tokenized: Sequence[TokenizedExample], stage: int, cfg: CoconutConfig,
                         latent_ids, pad_id: int) -> dict[str, float]:
    """Teacher-forced metrics of `tokenized` at `stage` (no uniform_prob mixing), for the curriculum gate.

    loss: token-mean cross-entropy of the whole target; next_step_loss: cross-entropy summed over the first target
    segment after the thoughts (`gate_next_steps` segments), averaged over examples; next_step_accuracy: fraction of
    examples whose first segment is predicted exactly (argmax at every token). That segment is what a new stage
    makes the model read off its thoughts, so it is where a plateau shows.
    """
    if not tokenized:
        return {"loss": float("nan"), "next_step_loss": float("nan"), "next_step_accuracy": float("nan")}
    plain = _teacher_forced(cfg)
    was = model.training
    model.eval()
    total, count, seg_loss, seg_exact = 0.0, 0, 0.0, 0.0
    try:
        for s in range(0, len(tokenized), cfg.eval_batch_size):
            part = tokenized[s : s + cfg.eval_batch_size]
            samples = [build_stage_sample(t, stage, plain, latent_ids) for t in part]
            b = collate_coconut(samples, pad_id)
            out = coconut_forward(model, b, bptt=True, normalizer=1.0, return_hidden=True)
            total += float(out.loss)
            count += out.num_tokens
            seg = torch.zeros(b.labels.shape, dtype=torch.bool)
            for i, (t, smp) in enumerate(zip(part, samples)):
                first = (b.latent_start - smp.latent_start) + smp.labels.index(next(x for x in smp.labels
                                                                                     if x != IGNORE_INDEX))
                seg[i, first : first + len(_first_segment(t, stage, cfg))] = True
            sel = seg[:, 1:].to(out.hidden.device)
            logits = model.lm_head(out.hidden[:, :-1][sel]).float()
            gold = b.labels[:, 1:].to(logits.device)[sel]
            rows = torch.arange(len(part), device=logits.device)[:, None].expand_as(sel)[sel]
            ce = F.cross_entropy(logits, gold, reduction="none")
            wrong = (logits.argmax(-1) != gold).float()
            seg_loss += float(torch.zeros(len(part), device=ce.device).index_add_(0, rows, ce).sum())
            seg_exact += float((torch.zeros(len(part), device=ce.device).index_add_(0, rows, wrong) == 0).sum())
    finally:
        model.train(was)
    n = len(tokenized)
    return {"loss": total / max(count, 1), "next_step_loss": seg_loss / n, "next_step_accuracy": seg_exact / n}


@torch.no_grad()
def _eval_loss(model: LatentModel, tokenized: Sequence[TokenizedExample], stage: int, cfg: CoconutConfig,
               latent_ids, pad_id: int) -> float:
    """Token-mean cross-entropy of the eval set at `stage` (no uniform_prob mixing)."""
    if not tokenized:
        return float("nan")
    plain = _teacher_forced(cfg)
    samples = [build_stage_sample(t, stage, plain, latent_ids) for t in tokenized]
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(samples), cfg.eval_batch_size):
        b = collate_coconut(samples[s : s + cfg.eval_batch_size], pad_id)
        out = coconut_forward(model, b, bptt=True, normalizer=1.0)
        total += float(out.loss)
        count += out.num_tokens
    model.train(was)
    return total / max(count, 1)
