"""Data parallelism for the RL trainer: who generates which rows, the gather of rollouts, the gradient all-reduce.

Design (accelerate underneath; one code path for 1 and N processes):

* **Global batch, TRL semantics.** One optimizer step trains on `per_device_train_batch_size *
  gradient_accumulation_steps * num_processes` completions = that / `num_generations` prompts. Every process reads
  the same global prompt order and advances the same cursor, so the data order does not depend on the world size.
* **Rollout chunks.** The step's rows are cut into chunks of `rollout_chunk_size` rows; chunk `c` of round `r` of
  step `s` is generated as one batched rollout with its own generator seeded from `(seed, s, r, c)`. The chunks are
  spread over the processes in contiguous runs. A chunk's samples therefore depend only on its rows and its seed,
  never on which process generates it or how many there are: a W-process run and a 1-process run with the same
  global batch and the same `rollout_chunk_size` draw identical completions. (Resume needs no generator state.)
* **Everything after generation sees the whole batch.** Rollouts, completions and rewards are all-gathered (cheap
  next to generation), so advantages, dynamic sampling and rollout metrics are computed on whole groups on every
  process, exactly as in a single process; groups may span processes.
* **Update.** Process `k` trains on the k-th contiguous slice of the global batch. Loss normalisers
  (`num_sequences`, `num_tokens`) are global, so the per-process losses sum to the single-process loss; after the
  micro-batches the gradients are **summed** across processes (one bucketed all-reduce), so every process takes the
  same optimizer step as the single process would.

Two ways to hold the model (`parallelism`):

* **ddp** (default): a full replica per process and the explicit gradient all-reduce above. Why not DDP-wrap the
  model: the trainer never calls `model.forward`. Rollout, replay and the method hooks call the decoder stack, the
  LM head, side modules and thought operators directly, which DDP's reducer (driven by the wrapped module's
  forward) does not see. The replica is correct for every method (LoRA and DLR included); the cost is no overlap
  of communication with the backward pass, and one full model + optimizer state per process.
* **fsdp**: FSDP2 (`torch.distributed.fsdp.fully_shard`, `latentrl.rl.fsdp`): parameters, gradients and AdamW
  state sharded over the processes, one unit per decoder layer plus a root unit with the rest. No-grad passes
  (rollouts, old/reference log-probs, evaluation) gather the whole model for the pass; the update runs as the root
  unit's forward, so FSDP gathers each layer around the calls HF's backbone makes and reduce-scatters the gradients
  — summed, as above, never averaged — during the backward pass; grad-norm clipping and AdamW work on the shards.
  Same rows, same completions and the same update as one process (tests/test_distributed.py). Checkpoints are
  gathered full state dicts in the usual files, so they resume in any mode and any number of processes. Not with
  LoRA, method 'dlr', latent_rl's value-head pretraining or fp16 (ConfigError naming the alternative; methods
  say why in `Method.fsdp_conflict`). DeepSpeed is refused: use fsdp.

Launch: `accelerate launch --config_file configs/accelerate/multi_gpu_ddp.yaml -m latentrl.cli train --config X`
on GPUs (`configs/accelerate/fsdp.yaml`, or `parallelism: fsdp` in the config, for FSDP); on CPUs (gloo)
`torchrun --nproc_per_node 2 -m latentrl.cli train --config X` with `parallelism: fsdp` in the config for FSDP
(accelerate never selects FSDP on CPUs; `accelerate launch --cpu` starts a single process unless it is set up for
mpirun).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, broadcast, gather_object

from latentrl.config import ConfigError
from latentrl.run_dir import run_lock
from latentrl.sampling import generator_for

MIXED_PRECISION = ("no", "bf16", "fp16")
_BUCKET_ELEMENTS = 1 << 24  # 16M elements per all-reduce bucket


def make_accelerator(mixed_precision: str | None) -> Accelerator:
    """An `Accelerator` with this run's mixed precision (None: what `accelerate launch` configured, else 'no').

    accelerate keeps one process-wide state; in a single process a trainer asking for another precision than an
    earlier one resets it (notebooks, test suites). With several processes the launcher's setting must match.
    """
    mp = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if mp not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mp!r}")
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mp):
        if PartialState().num_processes > 1:
            raise ConfigError(f"mixed_precision={mp!r} differs from the launcher's "
                              f"{state.get('_mixed_precision')!r}; set it in one place")
        AcceleratorState._reset_state()
    # accelerate starts a process group on CPUs (gloo) only when asked to use the CPU; torchrun does not say so
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=mp, cpu=cpu)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "DeepSpeed is not supported: rollouts and replays call the decoder stack, LM head and thought operators "
            "directly rather than one wrapped forward, which DeepSpeed's engine needs; for sharded training launch "
            "with configs/accelerate/fsdp.yaml (or set parallelism: fsdp), else with multi_gpu_ddp.yaml")
    if mp == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("mixed_precision='fp16' needs a GPU (accelerate does not autocast to fp16 on the CPU); "
                          "use bf16 on the CPU")
    return accelerator


def end_process_group() -> None:
    """Wait for every process, then tear the process group down: once, at the end of a launched program.

    Without it the process group's threads are still running when the interpreter exits, and a gloo rank can abort
    on its way out ("terminate called without an active exception") after all its work is done, failing the launch.
    A no-op in a single process.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of `n` items over `parts` owners, sizes differing by at most one (first
    owners get the extra items), like `numpy.array_split`."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        end = start + base + (1 if k < extra else 0)
        out.append((start, end))
        start = end
    return out


def chunk_ranges(n_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) row ranges of consecutive chunks of `chunk_size` rows (the last may be shorter)."""
    return [(s, min(s + chunk_size, n_rows)) for s in range(0, n_rows, chunk_size)]


def chunk_generator(seed: int, step: int, round_: int, chunk: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one rollout chunk, on `device` (the model's: sampling never leaves it): a function of
    (seed, step, round, chunk) only, never of the world size (`latentrl.sampling.generator_for`)."""
    return generator_for(device, seed, step, round_, chunk)


class DataParallel:
    """The process group as the trainer sees it: rank, world size, gathers and the gradient all-reduce."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def my_chunks(self, n_chunks: int) -> range:
        """Indices of the rollout chunks this process generates (a contiguous run)."""
        start, end = split_evenly(n_chunks, self.world_size)[self.rank]
        return range(start, end)

    def my_rows(self, n_rows: int) -> torch.Tensor:
        """Row indices of the global batch this process trains on (its contiguous slice)."""
        start, end = split_evenly(n_rows, self.world_size)[self.rank]
        return torch.arange(start, end)

    def gather_objects(self, items: list[Any]) -> list[Any]:
        """Every process's `items`, concatenated in rank order (identity in one process)."""
        if self.world_size == 1:
            return list(items)
        return gather_object(list(items))

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Key-wise sum over processes (keys missing on a process count as 0)."""
        if self.world_size == 1:
            return dict(values)
        out: dict[str, float] = {}
        for part in gather_object([values]):
            for k, v in part.items():
                out[k] = out.get(k, 0.0) + float(v)
        return out

    def any_true(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (so all raise together instead of hanging)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def lock_run_folder(self, stack: contextlib.ExitStack, output_dir: str | os.PathLike | None) -> None:
        """Hold `run_lock(output_dir)` on the main process for the life of `stack`. When another run holds the
        folder, every process raises (the main one's message), so no process is left waiting at a collective."""
        error: ConfigError | None = None
        try:
            stack.enter_context(run_lock(output_dir, enabled=self.is_main))
        except ConfigError as e:
            error = e
        if self.any_true(error is not None):
            raise error or ConfigError(f"output_dir {str(output_dir)!r} is in use by another run")

    @torch.no_grad()
    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its sum over processes (a missing gradient counts as zeros)."""
        if self.world_size == 1:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(params):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            flat = self.accelerator.reduce(flat, reduction="sum")
            offset = 0
            for p in bucket:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    @torch.no_grad()
    def broadcast_parameters(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy the main process's values into every process's tensors (identical replicas at the start)."""
        if self.world_size == 1:
            return
        for t in tensors:
            t.data.copy_(broadcast(t.data.clone(), from_process=0))


def _buckets(params: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """Consecutive same-dtype/device groups of at most `_BUCKET_ELEMENTS` elements (one all-reduce each)."""
    out: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        if out and out[-1][0].grad.dtype == p.grad.dtype and out[-1][0].device == p.device \
                and size + p.numel() <= _BUCKET_ELEMENTS:
            out[-1].append(p)
            size += p.numel()
        else:
            out.append([p])
            size = p.numel()
    return out
