"""FSDP2 for the RL trainer: parameters, gradients and optimizer state sharded over the processes.

The trainer never calls one wrapped `model.forward`; rollouts, replays and method hooks call the embeddings, the
decoder stack, the LM head, side modules and thought operators directly. `ShardedPolicy` makes that work with
`torch.distributed.fsdp.fully_shard` (FSDP2) without changing those call sites:

* **Units.** Every decoder layer (the HF model's `_no_split_modules` classes, as accelerate's transformer-based
  wrap) is one FSDP unit; its forward hooks all-gather it before each call HF's backbone makes and free it after,
  and in backward gather it again and reduce-scatter its gradients. Everything else (embeddings and a tied LM
  head — one unit, so the tie holds —, final norm, side modules such as HRPO's gate or a value head) is the root
  unit of a small wrapper module, `_Root`, whose forward runs a callable.
* **Update (with gradients).** `ShardedPolicy.forward(fn)` runs the trainer's loss computation as the root's
  forward: the root unit is gathered for it and stays gathered into the backward (replay recomputes its LM-head
  chunks there); FSDP's end-of-backward callback reduce-scatters the root unit's gradients. Gradients are
  **summed**, not averaged (`set_gradient_divide_factor(1)` with sum-only collectives, which gloo needs), because
  the trainer's loss normalisers are already global (see `latentrl.rl.distributed`).
* **No-grad passes** (rollouts, old/reference log-probs, evaluation, latent metrics): `gathered(model)` all-gathers
  every unit at once for the whole pass and frees them after, as TRL gathers ZeRO-3 parameters for generation; the
  fast decode path (which reads layer weights) then sees ordinary tensors. Peak memory during rollouts is one full
  model per process (the reference model is gathered on its own, after the policy is freed).
* **Checkpoints** are full state dicts (torch.distributed.checkpoint.state_dict, full_state_dict) written by the
  main process in the same files as a 1-process run (`save_pretrained` folder, an id-keyed `optimizer.pt`), so a
  checkpoint moves between 1 process, DDP-style and FSDP runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from latentrl.config import ConfigError
from latentrl.model import SIDE_MODULES_FILE, LatentModel


class _Root(nn.Module):
    """The root FSDP unit: holds the model so that its non-layer parameters form one unit; forward runs `fn`."""

    def __init__(self, model: LatentModel):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


def layer_classes(model: LatentModel) -> set[str]:
    """Class names of the decoder layers (HF `_no_split_modules`): the FSDP units besides the root."""
    names = set(getattr(model.model, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(f"FSDP needs the decoder-layer classes of {type(model.model).__name__} (HF "
                          "`_no_split_modules`), and this model does not declare them; use parallelism='ddp'")
    return names


class ShardedPolicy:
    """FSDP2 sharding of a `LatentModel` (and a separate reference model) plus the pieces the trainer needs."""

    def __init__(self, device: torch.device, world_size: int):
        self.mesh = init_device_mesh(device.type, (world_size,))
        self._roots: dict[int, _Root] = {}

    # ------------------------------------------------------------------ sharding
    def shard(self, model: LatentModel) -> None:
        """Shard `model` in place: one unit per decoder layer, the rest in the root unit. Every process must hold
        the same full weights before (each keeps its slice). Gradients are summed over processes."""
        classes = layer_classes(model)
        layers = [m for m in model.model.modules() if type(m).__name__ in classes]
        if not layers:
            raise ConfigError(f"FSDP found no decoder layer of classes {sorted(classes)} in "
                              f"{type(model.model).__name__}; use parallelism='ddp'")
        for layer in layers:
            fully_shard(layer, mesh=self.mesh, reshard_after_forward=True)
        root = _Root(model)
        fully_shard(root, mesh=self.mesh, reshard_after_forward=False)
        for unit in self._units(root):
            unit.set_gradient_divide_factor(1.0)  # the trainer's normalisers are global: sum, do not average
            unit.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
        # every process reduce-scatters every parameter (zeros where its slice produced no gradient), so the
        # collectives match even when a side module is used on one process only (as `sum_gradients` does)
        root.set_reduce_scatter_unused_params(True)
        with torch.no_grad():
            root(lambda: None)  # FSDP picks its root at the first forward; make that this wrapper
        root.reset_iter_state()
        self._roots[id(model)] = root

    @staticmethod
    def _units(root: _Root) -> list[FSDPModule]:
        return [m for m in root.modules() if isinstance(m, FSDPModule)]

    def is_sharded(self, model: LatentModel | None) -> bool:
        return model is not None and id(model) in self._roots

    def forward(self, model: LatentModel, fn: Callable[[], Any]) -> Any:
        """Run `fn` (a loss computation with gradients over `model`) as the root unit's forward, so FSDP gathers
        the root unit for it and its backward, and reduce-scatters the root unit's gradients."""
        return self._roots[id(model)](fn)

    @contextlib.contextmanager
    def gathered(self, model: LatentModel | None) -> Iterator[None]:
        """All of `model`'s parameters gathered, under no_grad, for a whole pass; sharded again afterwards.
        A no-op for a model that is not sharded (or None)."""
        if not self.is_sharded(model):
            yield
            return
        root = self._roots[id(model)]
        units = self._units(root)
        with torch.no_grad():
            root.set_reshard_after_forward(False)  # layer forwards inside keep their gathered weights
            for unit in units:
                unit.unshard()
            try:
                yield
            finally:
                root.set_reshard_after_forward(True)
                root.set_reshard_after_forward(False, recurse=False)
                root.reset_iter_state()  # reshards every unit and clears FSDP's per-iteration bookkeeping

    # ------------------------------------------------------------------ gradients
    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the gradients' global 2-norm to `max_norm` (torch's clip on sharded DTensor gradients); returns
        the norm before clipping, the same on every process."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        if any(not isinstance(g, DTensor) for g in grads):
            raise RuntimeError("FSDP: a trained parameter is not sharded (it is outside the FSDP model)")
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
        return norm

    # ------------------------------------------------------------------ checkpoints
    _FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def full_model_state(self, model: LatentModel) -> dict[str, torch.Tensor]:
        """The full `LatentModel` state dict on the main process (empty elsewhere); every process must call it."""
        return get_model_state_dict(model, options=self._FULL)

    def load_model(self, model: LatentModel, path: str | Path) -> None:
        """Load a `save_pretrained` folder (written by any run) into the sharded `model`: every process reads the
        full weights and keeps its slice."""
        path = Path(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=model.model.dtype)
        state = {f"model.{k}": v for k, v in hf.state_dict().items()}
        side = path / SIDE_MODULES_FILE
        if side.exists() and len(model.side_modules):
            state.update({f"side_modules.{k}": v for k, v in load_file(str(side)).items()})
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))

    def optimizer_state(self, model: LatentModel, optimizer: torch.optim.Optimizer) -> "FullOptimizerState":
        """The optimizer's full state in torch's own id-keyed `state_dict()` format (collective)."""
        full = get_optimizer_state_dict(model, optimizer, options=self._FULL)
        return FullOptimizerState(model, optimizer, full)

    def optimizer_loader(self, model: LatentModel, optimizer: torch.optim.Optimizer) -> "FullOptimizerState":
        """An object whose `load_state_dict(id_keyed_state)` loads a full optimizer state into the shards."""
        return FullOptimizerState(model, optimizer, None)


class FullOptimizerState:
    """Bridges torch's id-keyed optimizer `state_dict()` (what `optimizer.pt` holds) and the parameter-name-keyed
    full state dicts of torch.distributed.checkpoint, which FSDP needs to gather and scatter the shards."""

    def __init__(self, model: LatentModel, optimizer: torch.optim.Optimizer, full: dict[str, Any] | None):
        self.model, self.optimizer, self.full = model, optimizer, full
        names = {id(p): n for n, p in model.named_parameters()}
        self.fqns = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """Id-keyed, as `optimizer.state_dict()` of the same optimizer in one process (main process only)."""
        ids = {n: i for i, n in enumerate(self.fqns)}
        groups, k = [], 0
        for g, full_g in zip(self.optimizer.param_groups, self.full["param_groups"]):
            n = len(g["params"])
            groups.append({**{key: v for key, v in full_g.items() if key != "params"}, "params": list(range(k, k + n))})
            k += n
        state = {ids[n]: s for n, s in self.full["state"].items()}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an id-keyed full state (from any run) into this process's shards."""
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [self.fqns[i] for i in g["params"]]}
                  for g in state_dict["param_groups"]]
        full = {"state": {self.fqns[int(i)]: s for i, s in state_dict["state"].items()}, "param_groups": groups}
        set_optimizer_state_dict(self.model, self.optimizer, full,
                                 options=StateDictOptions(full_state_dict=True))
