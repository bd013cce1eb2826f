"""The engine every supervised training loop runs on: the process group (accelerate, bf16, LoRA), AdamW, the LR
schedule, the data order, metrics, resumable checkpoints, around the shared optimizer step
(`latentrl.optimizer_steps`: micro-batches, autocast, gradient sum over processes, clipping, the metric window).

CoT SFT, superposition SFT and Coconut curriculum SFT all train through `StepLoop`; each trainer owns only its loss
and its schedule of stages (Coconut's passes, gate and optimizer resets are a driver around `StepLoop.train_step`,
as a curriculum callback would be around `transformers.Trainer`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from latentrl.config import ConfigError, config_to_dict
from latentrl.optimizer_steps import EpochOrder, LossFn, MetricWindow, OptimizerSteps
from latentrl.rl.distributed import DataParallel, make_accelerator
from latentrl.run_dir import run_identity, run_lock
from latentrl.sft.config import MetricsOutputConfig, SFTTrainingConfig, StepScheduleConfig

__all__ = [
    "Checkpoints",
    "RunMetrics",
    "StepLoop",
    "launch",
    "lr_lambda",
    "make_adamw",
    "make_scheduler",
    "step_loop_state",
]


def launch(cfg: SFTTrainingConfig, model: Any) -> DataParallel:
    """The process group a supervised run trains in (one process, or every process of an `accelerate launch`):
    LoRA applied first (a LoRA run's checkpoints hold its adapter), the accelerator with `mixed_precision`, the model
    on its device. Every process trains its share of each global batch (`my_share`); gradients are summed."""
    if cfg.lora.enabled and not model.is_peft:
        model.apply_lora(cfg.lora)
    dp = DataParallel(make_accelerator(cfg.mixed_precision))
    if dp.accelerator.mixed_precision == "fp16":
        raise ConfigError("the supervised loops have no fp16 loss scaler: launch with bf16 or no mixed precision (the "
                          "launcher set fp16)")
    model.to(dp.accelerator.device)
    return dp


def make_adamw(params: Iterable[nn.Parameter], cfg: SFTTrainingConfig, *,
               exempt_1d_from_decay: bool = False) -> torch.optim.AdamW:
    """AdamW over `params` with the config's rate, betas, epsilon and weight decay.

    `exempt_1d_from_decay` puts biases and norm weights (tensors of dim < 2) in a second group without decay (what
    CoT SFT does); otherwise one group decays every parameter (Coconut's paper setting, superposition SFT).
    """
    params = list(params)
    kw = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
    if exempt_1d_from_decay:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, **kw)
    return torch.optim.AdamW(params, weight_decay=cfg.weight_decay, **kw)


def lr_lambda(kind: str, warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at each step: transformers' schedule `kind` (`get_scheduler`), with
    one difference: warmup step s trains at HF's multiplier of step s + 1, so the first step already learns (HF's
    first warmup step has rate 0)."""
    from transformers import get_scheduler

    unit = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)  # get_scheduler wants an optimizer: a stand-in
    shape = get_scheduler(kind, unit, num_warmup_steps=warmup_steps, num_training_steps=max_steps).lr_lambdas[0]
    warm = 0 if kind == "constant" else warmup_steps
    return lambda step: shape(step + 1) if step < warm else shape(step)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: StepScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The config's warmup + schedule over max_steps, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_scheduler_type, cfg.warmup_steps,
                                                                  cfg.max_steps))


class RunMetrics:
    """Where a loop's records go: the history list it names and, with an output_dir, the run's metric sinks.

    Opening it replaces an earlier run when overwrite_output_dir is set (the caller checked the folder with
    `check_new_run` before any work); `resume_step`: a resumed run, whose sinks keep what was logged up to that
    step and drop the rest; `write`: False on every process but the main one of a launch, whose records go to the
    history only; `close()` flushes the sinks.
    """

    def __init__(self, cfg: MetricsOutputConfig, resume_step: int | None = None, write: bool = True):
        from latentrl.logger import MetricsLogger
        from latentrl.run_dir import replace_run

        if write and cfg.output_dir and cfg.overwrite_output_dir and resume_step is None:
            replace_run(cfg.output_dir)
        sinks = [s for s in cfg.report_to if s != "none"] if cfg.output_dir and write else []
        self.logger = (MetricsLogger(cfg.output_dir, sinks, run_config=config_to_dict(cfg), resume_step=resume_step)
                       if sinks else None)

    def log(self, step: int, record: dict[str, Any], into: list[dict[str, Any]]) -> None:
        into.append({"step": step, **record})
        if self.logger is not None:
            self.logger.log(step, record)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


class Checkpoints:
    """The resumable checkpoints of a supervised loop, in the RL trainer's format (`latentrl.checkpoint`).

    Opening it checks the run folder: a new run may not mix with an earlier one (`check_new_run`); a resumed run
    (`resume_from_checkpoint`: latest or a folder) loads the checkpoint's weights into `model` at once and keeps
    its trainer state in `state` (`step` and whatever the loop saved), so the loop can find its place. The loop
    then calls `restore` once its optimizer exists (AdamW, LR schedule and RNG states come back), and `save` after
    each step (written every `save_steps` steps, atomically, the newest `save_total_limit` kept; by the main
    process of a launch, `dp`, while the others wait). It holds the run folder's lock (`run_lock`) until `close`.
    Apply LoRA to `model` before opening it: a LoRA run's checkpoints hold the adapter.
    """

    def __init__(self, cfg: MetricsOutputConfig, model: Any, dp: Any = None, name: str | None = None):
        from latentrl.checkpoint import load_checkpoint
        from latentrl.run_dir import check_new_run, check_same_run, resume_checkpoint, set_aside_newer_checkpoints

        self.cfg, self.model, self.dp = cfg, model, dp
        #: what the checkpoints record as their run (`run_dir.run_identity`): the trainer's name, the starting model
        self.identity = run_identity(name, getattr(cfg, "model_name_or_path", None)) if name is not None else {}
        for key in ("save_steps", "resume_from_checkpoint"):  # checked here: a caller may set output_dir late
            if getattr(cfg, key) and not cfg.output_dir:
                raise ConfigError(f"{key}={getattr(cfg, key)} needs an output_dir (the checkpoints live there)")
        self._stack = contextlib.ExitStack()  # the run folder's lock (`close` releases it)
        if dp is not None:
            dp.lock_run_folder(self._stack, cfg.output_dir)
        else:
            self._stack.enter_context(run_lock(cfg.output_dir))
        try:
            self.path = (resume_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint) if cfg.resume_from_checkpoint
                         else None)
            self.state: dict[str, Any] | None = None
            if self.path is None:
                check_new_run(cfg.output_dir, overwrite=cfg.overwrite_output_dir, resumable=bool(cfg.save_steps))
            else:
                if name is not None:  # another trainer's or another starting model's checkpoint is refused
                    check_same_run(self.path, name, getattr(cfg, "model_name_or_path", None), trainer=True)
                self.state = load_checkpoint(self.path, optimizer=None, restore_rng=False)
                model.load_weights(self.path)
                if dp is None or dp.is_main:
                    set_aside_newer_checkpoints(cfg.output_dir, self.path)
            if dp is not None:
                dp.barrier()  # every process has looked at the folder before the main one writes into it
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        """Release the run folder (the loop calls it when training ends, however it ends)."""
        self._stack.close()

    @property
    def resume_step(self) -> int | None:
        """The step the run resumes after (None: a new run)."""
        return self.state["step"] if self.state is not None else None

    def restore(self, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> dict[str, Any]:
        """Load the checkpoint's optimizer, scheduler and RNG states; returns its trainer state."""
        from latentrl.checkpoint import load_checkpoint

        return load_checkpoint(self.path, optimizer=optimizer, scheduler=scheduler)

    def restore_step_loop(self, optimizer: torch.optim.Optimizer, scheduler: Any, order: EpochOrder,
                          window: MetricWindow) -> dict[str, Any]:
        """`restore`, plus the data order and metric window of a step loop (CoT and superposition SFT) saved by
        `save(..., extra=step_loop_state(...))`; returns the trainer state for the loop's own entries."""
        saved = self.restore(optimizer, scheduler)
        if "order" not in saved or "window" not in saved:
            raise ConfigError(f"{self.path} was written by an older latentrl, before the supervised loops shared one "
                              "engine (it has no data order or metric window to continue from): start a new run "
                              "(another output_dir, or overwrite_output_dir=true), or resume it with that version")
        order.load_state_dict(saved["order"])
        window.load_state_dict(saved["window"])
        return saved

    def due(self, step: int, force: bool = False) -> bool:
        """Whether `save(step, ..., force)` writes a checkpoint."""
        return bool(self.cfg.save_steps) and (step % self.cfg.save_steps == 0 or force)

    def save(self, step: int, optimizer: torch.optim.Optimizer, scheduler: Any = None,
             extra: Mapping[str, Any] | None = None, force: bool = False) -> None:
        """Write checkpoint-{step} when `step` is a multiple of save_steps (or `force`, with save_steps set);
        `extra` is the loop's own state."""
        from latentrl.checkpoint import save_checkpoint

        if not self.due(step, force):
            return
        if self.dp is None or self.dp.is_main:
            save_checkpoint(self.cfg.output_dir, step, save_model=self.model.save_pretrained, optimizer=optimizer,
                            scheduler=scheduler, extra_state={**(extra or {}), **self.identity},
                            total_limit=self.cfg.save_total_limit)
        if self.dp is not None:
            self.dp.barrier()


def step_loop_state(order: EpochOrder, window: MetricWindow, train_time: float, **loop: Any) -> dict[str, Any]:
    """What a step loop saves with its checkpoint: data order, metric window, training time and its own `loop`
    entries (history lists, gate streak); `Checkpoints.restore_step_loop` reads it back."""
    return {"order": order.state_dict(), "window": window.state_dict(), "train_time": train_time, **loop}


class StepLoop:
    """The engine of every supervised loop (CoT SFT, superposition SFT, Coconut curriculum SFT): optimizer steps,
    each on one global batch of `per_device_train_batch_size x processes` examples (drawn by a seeded `EpochOrder`,
    or given by the trainer), with AdamW, the LR schedule, clipping, metric windows, resumable checkpoints and the
    run folder's lock.

    Opening it sets the run up in this order: the process group (`launch`: LoRA, precision, device), `prepare(dp)`
    (modules the run adds to the model before a checkpoint is loaded into it), the run folder and a resumed run's
    weights (`Checkpoints`), torch's seed, the data order, `extra_modules()` (training-only modules such as
    Coconut's probe heads: trained, clipped and checkpointed with the model, never saved with it), identical
    replicas, AdamW and the schedule (a `StepScheduleConfig`; other configs keep the rate constant), a resumed run's
    optimizer / order / window / extra modules (`saved` then holds its trainer state and `start` its step), the
    metric sinks (main process only). The trainer drives it: `train_step(loss_fn)` per step, `log_window` / `save`
    as it likes, `reset_optimizer` where its schedule re-makes AdamW, and `close()` in a `finally`.
    """

    def __init__(self, cfg: MetricsOutputConfig, model: Any, num_examples: int, name: str, *,
                 exempt_1d_from_decay: bool = False,
                 prepare: Callable[[DataParallel], None] | None = None,
                 extra_modules: Callable[[], Sequence[nn.Module]] | None = None,
                 total_steps: Callable[[int], int | None] | None = None):
        from latentrl.logger import progress

        self.cfg, self.model, self.exempt_1d_from_decay = cfg, model, exempt_1d_from_decay
        self.dp = launch(cfg, model)
        if prepare is not None:
            prepare(self.dp)
        # checks the run folder; loads a resumed run's weights (the same trainer's, whatever its no-BPTT flag)
        self.checkpoints = Checkpoints(cfg, model, self.dp, name=name.replace("[no-bptt]", ""))
        try:
            torch.manual_seed(cfg.seed)
            self.order = EpochOrder(num_examples, torch.Generator().manual_seed(cfg.seed))
            self.extra_modules = [m.to(self.dp.accelerator.device) for m in (extra_modules() if extra_modules else ())]
            params = [p for p in model.parameters() if p.requires_grad]
            extra_params = [p for m in self.extra_modules for p in m.parameters()]
            # identical replicas, whatever each process loaded
            self.dp.broadcast_parameters([*model.parameters(), *extra_params])
            optimizer, scheduler = self._make_optimizer(params, extra_params)
            kept = (f"the last checkpoint in {cfg.output_dir} is intact; " if cfg.output_dir and cfg.save_steps
                    else "")
            self.steps = OptimizerSteps(
                params, optimizer, scheduler, max_grad_norm=cfg.max_grad_norm, extra_params=extra_params, dp=self.dp,
                diverged_hint=lambda n: f"in optimizer step {n}; nothing was updated: {kept}lower the learning rate "
                                        f"(now {cfg.learning_rate})")
            self.start = 0
            self.saved: dict[str, Any] | None = None
            if self.checkpoints.state is not None:
                self.saved = self.checkpoints.restore_step_loop(optimizer, scheduler, self.order, self.steps.window)
                for module, state in zip(self.extra_modules, self.saved.get("extra_modules", []), strict=True):
                    module.load_state_dict(state)
                self.steps.train_time, self.start = self.saved["train_time"], self.saved["step"]
                self.steps.num_steps = self.start
            self.metrics = RunMetrics(cfg, resume_step=self.checkpoints.resume_step, write=self.dp.is_main)
            self.dp.barrier()  # the main process has replaced an earlier run (overwrite_output_dir) before anyone goes on
        except BaseException:
            self.checkpoints.close()
            raise
        total = total_steps(self.dp.world_size) if total_steps is not None else cfg.max_steps
        self.bar = progress(total, name, disable=cfg.disable_tqdm)
        self.bar.update(self.start)

    def _make_optimizer(self, params: list[nn.Parameter], extra_params: list[nn.Parameter]
                        ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR | None]:
        """A fresh AdamW (the extra modules' parameters in a second group) and LR schedule."""
        optimizer = make_adamw(params, self.cfg, exempt_1d_from_decay=self.exempt_1d_from_decay)
        if extra_params:
            optimizer.add_param_group({"params": extra_params})
        scheduler = make_scheduler(optimizer, self.cfg) if isinstance(self.cfg, StepScheduleConfig) else None
        return optimizer, scheduler

    def reset_optimizer(self) -> None:
        """A fresh AdamW and LR schedule (a curriculum that re-makes the optimizer at a stage or pass)."""
        self.steps.optimizer, self.steps.scheduler = self._make_optimizer(self.steps.params, self.steps.extra_params)

    @property
    def train_time(self) -> float:
        """Seconds spent in optimizer steps, over every session of a resumed run."""
        return self.steps.train_time

    def global_batch_size(self, gradient_accumulation_steps: int = 1) -> int:
        """Examples per optimizer step over every process."""
        return self.cfg.per_device_train_batch_size * gradient_accumulation_steps * self.dp.world_size

    def train_step(self, loss_fn: LossFn, idx: list[int] | None = None) -> tuple[float, float]:
        """One optimizer step (`OptimizerSteps.step`) on the global batch `idx` (example indices; default: the next
        batch of the data order). The forwards run under the run's autocast; the summed stats go to the metric
        window. Returns (grad norm before clipping, learning rate)."""
        if idx is None:
            idx = self.order.draw(self.global_batch_size())
        out = self.steps.step(loss_fn, idx)
        return out.grad_norm, out.learning_rate

    def log_window(self, step: int, grad_norm: float, lr: float, into: list[dict[str, Any]],
                   shape: Callable[[dict[str, float]], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Log the window's means (through `shape`, which names them and adds the loop's own entries) with the
        step's learning rate, gradient norm and training time."""
        means = self.steps.window.pop()
        record = {**(shape(means) if shape is not None else means), "learning_rate": lr, "grad_norm": grad_norm,
                  "train_wall_s": self.train_time}
        self.metrics.log(step, record, into)
        if getattr(self.cfg, "disable_tqdm", None) is None and self.bar.disable and self.dp.is_main:  # batch: lines
            from latentrl.logger import console_line

            print(console_line(step, self.bar.total, record), file=sys.stderr, flush=True)
        return record

    def save(self, step: int, force: bool = False, **loop: Any) -> None:
        """A checkpoint after `step` when it is due (`save_steps`; `force`: now, with save_steps set), with the
        loop's own state `loop`."""
        if not self.checkpoints.due(step, force):
            return
        state = step_loop_state(self.order, self.steps.window, self.train_time,
                                extra_modules=[m.state_dict() for m in self.extra_modules], **loop)
        self.checkpoints.save(step, self.steps.optimizer, self.steps.scheduler, state, force=force)

    def close(self) -> None:
        """Flush the metric sinks, close the progress bar and release the run folder."""
        self.bar.close()
        self.metrics.close()
        self.checkpoints.close()
