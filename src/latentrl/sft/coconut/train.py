"""The Coconut curriculum around the shared SFT engine (`StepLoop`): stages by epoch or by convergence (the stage
gate), optimizer resets, logging, evaluation."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from latentrl.data.schema import Example
from latentrl.head_logprobs import lm_head_token_logprobs
from latentrl.model import LatentModel
from latentrl.optimizer_steps import my_share
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
from latentrl.sft.loop import StepLoop
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

    The steps run on the shared engine (`latentrl.sft.loop.StepLoop`: processes, precision, LoRA, AdamW, clipping,
    checkpoints); this function is the curriculum around it: which stage each pass over the data trains, when the
    gate ends a stage, when AdamW is re-made, when to evaluate and when a checkpoint may be written.
    """
    if not train_examples:
        raise ValueError("train_coconut needs at least one training example")
    cfg = config
    converged = cfg.stage_advance == "converged"
    t_start = time.perf_counter()
    tok = model.tokenizer
    latent_ids = model.latent_ids
    _latent_ids(latent_ids)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_tok = [tokenize_example(tok, ex) for ex in train_examples]
    if not any(t.steps for t in train_tok):
        warnings.warn(f"none of the {len(train_tok)} training examples has reasoning steps: the curriculum has no "
                      "chain to replace with thoughts, so every stage trains thoughts in front of the bare answer "
                      "(Coconut starts from chain-of-thought data: question, steps, answer)", stacklevel=2)
    eval_examples = list(eval_examples)
    eval_tok = [tokenize_example(tok, ex) for ex in eval_examples]
    gate_source = list(gate_examples) if gate_examples is not None else eval_examples
    gate_tok = [tokenize_example(tok, ex) for ex in gate_source[: cfg.gate_num_examples]]
    if converged and not gate_tok:
        raise ValueError("stage_advance=converged needs gate examples (gate_examples or eval_examples) to measure "
                         "when a stage is learned")
    budget = cfg.max_new_positions or _eval_budget(cfg, train_tok + eval_tok)
    stages = list(range(cfg.start_stage, cfg.last_stage + 1))
    epochs = list(range(cfg.start_epoch, cfg.num_epochs))
    teacher: LatentModel | None = None

    def prepare(dp: Any) -> None:
        """What the run adds to the model before a checkpoint is loaded into it (and the optimizer is built)."""
        nonlocal teacher
        if cfg.thought_projection:
            ensure_thought_projection(model)
        if cfg.distill_weight > 0:  # the frozen CoT teacher of the hidden-state distillation
            teacher = load_teacher(cfg.distill_teacher, model)

    def total_steps(world_size: int) -> int:
        step_size = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
        total = (sum(cfg.stage_max_steps(s) for s in stages) if converged
                 else len(epochs) * math.ceil(len(train_tok) / step_size))
        return total if cfg.max_steps is None else min(total, cfg.max_steps)

    def probe_heads() -> list[nn.Module]:
        """Training-only linear probe heads (seeded by cfg.seed; checkpointed, never saved with the model)."""
        if not cfg.probe_head_tokens:
            return []
        return [nn.Linear(model.hidden_size, cfg.num_probe_heads * model.vocab_size)]

    # the run folder is taken only once the inputs are known good (a refused input never leaves it locked)
    loop = StepLoop(cfg, model, len(train_tok), "coconut" + ("" if cfg.bptt else "[no-bptt]"), prepare=prepare,
                    extra_modules=probe_heads, total_steps=total_steps)
    dp, order = loop.dp, loop.order
    heads = loop.extra_modules[0] if loop.extra_modules else None
    step_size = loop.global_batch_size(cfg.gradient_accumulation_steps)
    total = total_steps(dp.world_size)
    history = CoconutHistory()
    step = 0
    resume = loop.saved  # where a resumed run picks up (None: a new run)
    if resume is not None:
        history, step = CoconutHistory(**resume["history"]), resume["step"]
    log = loop.metrics.log

    def do_eval(stage: int, epoch: int) -> dict[str, Any] | None:
        if not eval_examples:
            return None
        ev = coconut_evaluate(model, eval_examples, cfg, stage, max_new_positions=budget)
        ev_loss = _eval_loss(model, eval_tok, stage, cfg, latent_ids, pad_id)
        log(step, {"eval/pass_at_1": ev["pass_at_1"], "eval/mean_reasoning_positions": ev["mean_reasoning_positions"],
                   "eval/mean_latent_positions": ev["mean_latent_positions"], "eval/loss": ev_loss,
                   "eval/wall_s": ev["wall_s"], "stage": stage, "epoch": epoch}, history.eval)
        model.train()
        return ev

    def out_of_budget() -> bool:
        return cfg.max_steps is not None and step >= cfg.max_steps

    def pass_samples(stage: int, epoch: int) -> list[CoconutSample]:
        """Pass `epoch` over the data, every example at `stage` (its uniform_prob draws seeded by the pass)."""
        samples = stage_samples(train_tok, stage, cfg, latent_ids, epoch)
        too_long = [i for i, s in enumerate(samples) if len(s.input_ids) > cfg.max_length]
        if too_long:
            i = too_long[0]
            raise ValueError(f"training example {i} has {len(samples[i].input_ids)} tokens at stage {stage}, more "
                             f"than max_length={cfg.max_length}; raise max_length")
        return samples

    def new_pass(stage: int, epoch: int) -> list[CoconutSample]:
        """The pass's samples and its data order; a resumed run's first pass continues where it was saved."""
        nonlocal resume
        samples = pass_samples(stage, epoch)
        if resume is None:
            order.start_pass()
        resume = None
        return samples

    def micro_batches(samples: list[CoconutSample], idx: list[int]):
        """The step's loss per micro-batch: every micro-batch is collated on every process (the loss normaliser
        is the whole step's token count); process k trains on the k-th contiguous run of them."""
        micro = [idx[m : m + cfg.per_device_train_batch_size] for m in range(0, len(idx), cfg.per_device_train_batch_size)]
        batches = [collate_coconut([samples[i] for i in mb], pad_id) for mb in micro]
        n_tokens = float(sum(int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in batches))
        for b in my_share(dp, batches):
            out = coconut_forward(model, b.to(model.device), bptt=cfg.bptt, normalizer=n_tokens,
                                  probe_weight=cfg.probe_weight if (cfg.probe_tokens or heads) else 0.0,
                                  probe_heads=heads, teacher=teacher, distill_weight=cfg.distill_weight)
            stats = {"loss": float(out.loss.detach()), "token_accuracy": out.token_accuracy * out.num_tokens / n_tokens,
                     "thought_norm": out.thought_norm / len(batches), "forwards": float(out.num_forwards)}
            for name, value, acc in (("probe_head", out.probe_head_loss, out.probe_head_accuracy),
                                     ("probe", out.probe_loss, out.probe_accuracy), ("distill", out.distill_loss, None)):
                if not math.isnan(value):  # means over the micro-batches that have the term (the `_n` weights)
                    stats[f"{name}_loss"], stats[f"{name}_n"] = value / len(batches), 1 / len(batches)
                    if acc is not None:
                        stats[f"{name}_accuracy"] = acc / len(batches)
            yield out.loss, stats

    def record(stage: int, epoch: int):
        def shape(m: dict[str, float]) -> dict[str, Any]:
            r = {"loss": m["loss"], "token_accuracy": m["token_accuracy"], "latent/norm_mean": m["thought_norm"],
                 "forwards_per_step": m["forwards"], "stage": stage, "epoch": epoch}
            for name in ("probe", "probe_head", "distill"):
                if m.get(f"{name}_n", 0.0) > 0:
                    r[f"{name}_loss"] = m[f"{name}_loss"] / m[f"{name}_n"]
                    if f"{name}_accuracy" in m:
                        r[f"{name}_accuracy"] = m[f"{name}_accuracy"] / m[f"{name}_n"]
            return r

        return shape

    def train_step(samples: list[CoconutSample], stage: int, epoch: int) -> None:
        nonlocal step
        grad_norm, lr = loop.train_step(lambda idx, _mine: micro_batches(samples, idx),
                                        order.draw_in_pass(step_size))
        step += 1
        if step % cfg.logging_steps == 0 or step == total:
            r = loop.log_window(step, grad_norm, lr, history.train, shape=record(stage, epoch))
            loop.bar.set_postfix(stage=stage, loss=f"{r['loss']:.3f}")
        loop.bar.update(1)

    def reset_optimizer() -> None:
        """A fresh AdamW, logged; a new run's first pass takes the engine's first one (a reset at step 0)."""
        nonlocal fresh
        if not fresh:
            loop.reset_optimizer()
        fresh = False
        history.optimizer_resets.append(step)

    saved_at = -1

    def save(stage: int, epoch: int, stage_start: int, force: bool = False) -> None:
        """A resumable checkpoint (every save_steps steps; `force`: now). Called after each step but a pass's last,
        and at the start of each pass (after the previous stage's record and evaluation, the next stage's fresh
        optimizer and gate), so a step that ends a pass or a stage is saved once, with everything logged after it;
        and forced when `max_steps` stops the run, so a time-boxed run can be continued with a larger budget."""
        nonlocal saved_at
        if step in (0, saved_at) or not loop.checkpoints.due(step, force):
            return
        saved_at = step
        loop.save(step, force=force, stage=stage, epoch=epoch, stage_start=stage_start,
                  gate_streak=gate.streak if gate is not None else 0, history=history.to_dict())

    def gate_check(stage: int, epoch: int, stage_start: int) -> Any:
        """After a step of a converged-mode stage: evaluate the gate when due; its decision if the stage ends."""
        taken = step - stage_start
        if taken % cfg.gate_eval_steps and not gate.out_of_steps(taken):
            return None
        with dp.accelerator.autocast():
            gm = coconut_gate_metrics(model, gate_tok, stage, cfg, latent_ids, pad_id)
        d = gate.update(taken, gm[cfg.gate_metric])
        log(step, {**{f"gate/{k}": v for k, v in gm.items()}, "gate/passed": d.passed, "gate/streak": d.streak,
                   "stage": stage, "epoch": epoch}, history.gate)
        model.train()
        return d if d.advance else None

    def train_pass(samples: list[CoconutSample], stage: int, epoch: int, stage_start: int) -> Any:
        """The pass's remaining batches; in converged mode the gate may end the stage (returns its decision)."""
        while not order.pass_done and not out_of_budget():
            train_step(samples, stage, epoch)
            decision = gate_check(stage, epoch, stage_start) if converged else None
            if decision is not None:
                order.end_pass()
                return decision
            if not order.pass_done:
                save(stage, epoch, stage_start)
        if out_of_budget():
            save(stage, epoch, stage_start, force=True)
        return None

    gate = cfg.make_gate() if converged else None
    last_stage, last_epoch = cfg.start_stage, cfg.start_epoch
    fresh = resume is None  # the first pass of a new run records the first optimizer as a reset at step 0
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
                if resume is None:
                    new_stage = not history.stages or stage != history.stages[-1]
                    history.stages.append(stage)
                    if fresh or cfg.reset_optimizer == "epoch" or (cfg.reset_optimizer == "stage" and new_stage):
                        reset_optimizer()
                    samples = new_pass(stage, epoch)
                    save(stage, epoch, 0)
                else:
                    samples = new_pass(stage, epoch)
                train_pass(samples, stage, epoch, 0)
                last_epoch_of_stage = epoch == epochs[-1] or stage_of_epoch(cfg, epoch + 1) != stage
                if not out_of_budget() and (cfg.eval_strategy == "epoch"
                                            or (cfg.eval_strategy == "stage" and last_epoch_of_stage)):
                    if epoch != epochs[-1]:  # the final evaluation below covers the last epoch
                        do_eval(stage, epoch)
        else:
            epoch = 0  # passes over the data, counted across stages (seeds the data order / uniform_prob draws)
            for stage in stages:
                if out_of_budget():
                    break
                if resume is not None and stage < resume["stage"]:
                    continue  # trained before the checkpoint
                gate.start_stage()
                gate.max_steps = cfg.stage_max_steps(stage)
                if resume is not None:
                    gate.streak, stage_start, epoch = resume["gate_streak"], resume["stage_start"], resume["epoch"]
                else:
                    if fresh or cfg.reset_optimizer in ("stage", "epoch"):
                        reset_optimizer()
                    stage_start = step

                last_stage, decision = stage, None
                while decision is None and not out_of_budget():
                    last_epoch = epoch
                    if resume is None:
                        history.stages.append(stage)
                        if cfg.reset_optimizer == "epoch" and step > stage_start:
                            reset_optimizer()
                        samples = new_pass(stage, epoch)
                        save(stage, epoch, stage_start)
                    else:
                        samples = new_pass(stage, epoch)
                    decision = train_pass(samples, stage, epoch, stage_start)
                    epoch += 1
                reason = decision.reason if decision is not None else "max_steps_total"
                value = decision.value if decision is not None else float("nan")
                log(step, {"stage/index": stage, "stage/steps": step - stage_start,
                           "stage/gate_metric": cfg.gate_metric, "stage/gate_value": value, "stage/reason": reason},
                    history.stage_log)
                if cfg.eval_strategy in ("stage", "epoch") and stage != stages[-1] and not out_of_budget():
                    do_eval(stage, last_epoch)
        history.steps = step
        history.train_wall_s = loop.train_time
        history.final_eval = do_eval(last_stage, last_epoch)
    finally:
        model.eval()
        loop.close()
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
            gold = b.labels[:, 1:].to(sel.device)[sel]
            rows = torch.arange(len(part), device=sel.device)[:, None].expand_as(sel)[sel]
            scores = lm_head_token_logprobs(model.output_head, out.hidden[:, :-1][sel], gold,
                                            max_logprob=True)
            ce = -scores.logprobs
            wrong = (scores.logprobs < scores.max_logprob).float()
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
