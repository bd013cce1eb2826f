"""The mechanics of one optimizer step, shared by everything that trains: the RL trainer's update
(`latentrl.rl.trainer`), the supervised engine (`latentrl.sft.loop.StepLoop`: CoT, Coconut and superposition SFT) and
the side-module fits on frozen features (Latent RL's value-head pre-training, DLR's assistant distillation).

`OptimizerSteps.step(loss_fn, idx)`: zero the gradients, run the loss function's forwards (one, or one per
micro-batch, each under the run's autocast) and backwards, sum the gradients over processes, clip, step the
optimizer and its schedule, add the step's stats to a metric window. A non-finite loss (on any process) or gradient
norm stops the run with `TrainingDivergedError` before the optimizer moves, so the weights and the last checkpoint
stay as they were. `EpochOrder` draws the batches. What a loop adds around the step (run folder, checkpoints,
process group, metric sinks) is the RL trainer's or `sft/loop.py`'s.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from latentrl.rl.distributed import DataParallel, split_evenly

__all__ = ["EpochOrder", "LossFn", "MetricWindow", "OptimizerSteps", "StepOutcome", "TrainingDivergedError",
           "clip_gradients", "my_share", "optimizer_step"]

LossAndStats = tuple[torch.Tensor, dict[str, float]]
LossFn = Callable[[list[int], list[int]], LossAndStats | Iterator[LossAndStats]]
"""`loss_fn(global_batch, my_share)`: this process's loss and stats, or a generator of them per micro-batch."""


class TrainingDivergedError(RuntimeError):
    """Raised when the loss or gradients become non-finite; the last checkpoint is left untouched."""


def clip_gradients(params: Iterable[nn.Parameter], max_grad_norm: float) -> float:
    """Clip the global gradient norm of `params` to `max_grad_norm` (0: no clipping); returns the norm before it."""
    params = list(params)
    if max_grad_norm > 0:
        return float(nn.utils.clip_grad_norm_(params, max_grad_norm))
    return float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))


def optimizer_step(optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> float:
    """Step the optimizer (and the schedule, if any) on the gradients as they are (summed and clipped already).

    Returns the learning rate this step used, read before the schedule moves on.
    """
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return lr


def my_share(dp: DataParallel | None, items: list[Any]) -> list[Any]:
    """This process's contiguous share of a global batch (all of it in one process, or without a process group)."""
    if dp is None:
        return items
    first, last = split_evenly(len(items), dp.world_size)[dp.rank]
    return items[first:last]


class EpochOrder:
    """Batches of example indices drawn from a fresh seeded permutation per pass; a batch may span two passes."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.perm: list[int] = []
        self.cursor = 0

    def draw(self, batch_size: int) -> list[int]:
        idx: list[int] = []
        while len(idx) < batch_size:
            if self.cursor >= len(self.perm):
                self.perm, self.cursor = torch.randperm(self.n, generator=self.generator).tolist(), 0
            take = min(batch_size - len(idx), len(self.perm) - self.cursor)
            idx += self.perm[self.cursor : self.cursor + take]
            self.cursor += take
        return idx

    # a loop whose batches never span two passes (Coconut: each pass is one stage's data, rebuilt per pass)
    def start_pass(self) -> None:
        """Draw the next pass's permutation now; `draw_in_pass` then walks it."""
        self.perm, self.cursor = torch.randperm(self.n, generator=self.generator).tolist(), 0

    def draw_in_pass(self, batch_size: int) -> list[int]:
        """The next batch of the current pass (shorter at the pass's end)."""
        idx = self.perm[self.cursor : self.cursor + batch_size]
        self.cursor += len(idx)
        return idx

    @property
    def pass_done(self) -> bool:
        """Every batch of the current pass is drawn."""
        return self.cursor >= len(self.perm)

    def end_pass(self) -> None:
        """Drop the rest of the current pass (a stage that ended in the middle of one)."""
        self.cursor = len(self.perm)

    def one_pass(self, batch_size: int) -> Iterator[list[int]]:
        """The batches of one fresh pass, in order (the last one shorter)."""
        self.start_pass()
        while not self.pass_done:
            yield self.draw_in_pass(batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": list(self.perm), "cursor": self.cursor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.cursor = list(state["perm"]), int(state["cursor"])


class MetricWindow:
    """Sums of per-step metrics since the last logging step; `pop()` returns their means and starts afresh."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def pop(self) -> dict[str, float]:
        means = {k: v / self.n for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "n": self.n}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums, self.n = dict(state["sums"]), int(state["n"])


@dataclass(frozen=True)
class StepOutcome:
    """What one optimizer step reports: the gradient norm before clipping, the learning rate it used, the loss and
    the stats (summed over micro-batches, and over processes when each trained a slice: the global batch's values)."""

    grad_norm: float
    learning_rate: float
    loss: float
    stats: dict[str, float]


_LOSS = "\0loss"  # the loss's key while it is summed with the stats (no stat has this name)


def _step_in_loop(n: int) -> str:
    return f"in optimizer step {n}; nothing was updated: lower the learning rate"


class OptimizerSteps:
    """Optimizer steps on `params` (and `extra_params`: trained in the same step, clipped with `params` when
    clipping is on; without clipping the reported norm is `params`' alone).

    `dp`: the process group whose autocast the forwards run under and over which a divergence is agreed (None: one
    process, no autocast). `slices`: each process computes its slice of the global batch, so the loss and stats are
    summed over processes (False: every process computes the whole batch); `sum_gradients` (default: `slices`): the
    gradients are summed over processes after the backward passes (False where something else reduced them, e.g.
    FSDP). `backward` (default `loss.backward()`; accelerate's for fp16 loss scaling) and `clip` (default
    `clip_gradients`; `clip(params, max_grad_norm)` returns the norm before clipping) are the two steps a launcher
    may own; `require_finite_grad_norm=False` leaves a non-finite norm to an fp16 scaler, which skips the step.
    `optimizer` and `scheduler` may be replaced between steps (an optimizer reset). `train_time` adds up the seconds
    spent in `step`; `window` holds the stats since the last `window.pop()`; `num_steps` counts the steps taken (a
    resumed loop sets it to its step); `diverged_hint(n)` is the end of a `TrainingDivergedError`'s message for
    step n (where it was, what is intact, what to change).
    """

    def __init__(self, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *, max_grad_norm: float = 0.0,
                 extra_params: Sequence[nn.Parameter] = (), dp: DataParallel | None = None, slices: bool = True,
                 sum_gradients: bool | None = None, backward: Callable[[torch.Tensor], None] | None = None,
                 clip: Callable[[list[nn.Parameter], float], float] = clip_gradients,
                 require_finite_grad_norm: bool = True, diverged_hint: Callable[[int], str] = _step_in_loop):
        self.params, self.extra_params = list(params), list(extra_params)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.max_grad_norm, self.dp, self.slices = max_grad_norm, dp, slices
        self.sum_gradients = slices if sum_gradients is None else sum_gradients
        self.backward = backward or torch.Tensor.backward
        self.clip, self.require_finite_grad_norm, self.diverged_hint = clip, require_finite_grad_norm, diverged_hint
        self.window = MetricWindow()
        self.train_time, self.num_steps = 0.0, 0

    def step(self, loss_fn: LossFn, idx: list[int]) -> StepOutcome:
        """One optimizer step on the global batch `idx` (example indices). `loss_fn(idx, my_share)` returns this
        process's loss and stats, or yields them per micro-batch (each is backpropagated before the next forward:
        gradient accumulation; a loss that needs no gradient is only counted); every loss and stat is already its
        share of the global batch's mean, so they sum to it over micro-batches and processes."""
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        total, bad = 0.0, None
        for loss, stats in self._forwards(loss_fn, idx):
            if not torch.isfinite(loss):
                bad = loss.item()
                break
            if loss.requires_grad:
                self.backward(loss)
            total += loss.item()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        if self.dp.any_true(bad is not None) if self.dp is not None else bad is not None:  # every process stops
            self._diverged(f"non-finite loss ({bad if bad is not None else 'on another process'})")
        if self.dp is not None and self.sum_gradients:
            self.dp.sum_gradients(self.params + self.extra_params)
        clipped = self.params + self.extra_params if self.max_grad_norm > 0 else self.params
        grad_norm = float(self.clip(clipped, self.max_grad_norm))
        if self.require_finite_grad_norm and not math.isfinite(grad_norm):  # the same on every process
            self._diverged(f"non-finite gradient norm ({grad_norm})")
        lr = optimizer_step(self.optimizer, self.scheduler)
        self.num_steps += 1
        self.train_time += time.perf_counter() - t0
        if self.dp is not None and self.slices:
            totals = self.dp.sum_floats({**totals, _LOSS: total})  # one gather for both
            total = totals.pop(_LOSS)
        self.window.add(totals)
        return StepOutcome(grad_norm, lr, total, totals)

    def _diverged(self, what: str) -> None:
        """Drop the step's gradients and raise: the weights, the optimizer and every checkpoint stay as they were."""
        self.optimizer.zero_grad(set_to_none=True)
        raise TrainingDivergedError(f"{what} {self.diverged_hint(self.num_steps + 1)}")

    def _forwards(self, loss_fn: LossFn, idx: list[int]) -> Iterator[LossAndStats]:
        """`loss_fn`'s (loss, stats) pairs, each computed under autocast."""
        autocast = self.dp.accelerator.autocast if self.dp is not None else contextlib.nullcontext
        with autocast():
            out = loss_fn(idx, my_share(self.dp if self.slices else None, idx))  # whole batch: all of it
        if isinstance(out, tuple):
            yield out
            return
        while True:
            with autocast():
                item = next(out, None)
            if item is None:
                return
            yield item
