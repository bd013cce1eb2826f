"""The LM head prepacked for oneDNN, for the rollout's logits on a CPU at large vocabularies.

A decode step's LM head is a (B, H) @ (H, V) product: at V = 151,936 on a CPU core it is most of the step. PyTorch's
`torch.mm` runs it from the plain weight every call; oneDNN's linear from a weight reordered once into its blocked
layout (`torch.ops.mkldnn._reorder_linear_weight`, the packing inductor uses for frozen CPU weights) runs the same
product in about half the time here (32 rows at V = 151,936, one thread: H = 896, 92 against 177 ms; H = 128, 15
against 26 ms; `docs/bench/speed/packed_head_matmul.py`). The result is the same up to float rounding: the same
bits at H = 128 for 7 rows or more, not always at H = 896 or for one row, so a seeded rollout's draw at a bin's
edge may differ from `torch.mm`'s.

`PackedHead` keeps that reordered copy of a head's weight, whole or in chunks of rows (the chunks HRPO's fused step
walks, `methods/hrpo/fused_step.py`), one copy at a time. It repacks when the weight
changes (its storage or in-place version; the rollout engine also compares the weight's sum once per rollout),
and the RL trainer frees it after its rollouts, so the update's peak memory never holds it. It costs one more copy
of the weight while rollouts run (V x H floats: 78 MB at H = 128, 545 MB at Qwen2.5-0.5B's H = 896) and, in
training, a pack per rollout (~70 ms at H = 128, ~420 ms at H = 896: a few decode steps' saving). It applies only
where it pays and changes nothing else: no autograd (rollouts, evaluation), a plain float32 `nn.Linear` on the CPU
with at least `MIN_VOCAB` rows, and a PyTorch build with the oneDNN ops; otherwise callers take the head itself.
`ENABLED = False` (or `LATENTRL_PACKED_HEAD=0` in the environment) turns it off.
"""

from __future__ import annotations

import os

import torch
from torch import nn

ENABLED = os.environ.get("LATENTRL_PACKED_HEAD", "1") != "0"
MIN_VOCAB = 32768
"""Heads with fewer rows use `torch.mm` as they are (a small head is not the step's cost)."""


def _ops_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


class PackedHead:
    """A head's weight reordered for oneDNN, whole or in chunks of rows; see the module docstring.

    One packed copy at a time: `__call__` (whole logits) packs the whole weight unless chunks of the same weight are
    there already (then it joins the chunks' outputs), `chunks` (HRPO's fused walk) packs chunks. The copy is keyed on
    the weight's storage, shape, in-place version and chunking; `check(head)`, which the rollout engine calls once
    per rollout, also drops it when the weight's sum has changed (a change through `.data`, as a broadcast between
    processes makes, keeps the version counter)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._packed: list[torch.Tensor] = []  # one whole-weight tensor, or the chunks
        self._sum: float | None = None
        self.rows = 0  # rows per chunk (the last may be shorter)
        self.broken = not _ops_available()

    def __deepcopy__(self, memo: dict) -> "PackedHead":
        return PackedHead()  # a copied model packs its own weight (and oneDNN tensors are not copied or pickled)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def applies(self, head: nn.Module, x: torch.Tensor) -> bool:
        """Whether the packed copy may stand in for `head` on input `x` (see the module docstring)."""
        if not ENABLED or self.broken or torch.is_grad_enabled() or type(head) is not nn.Linear:
            return False
        w = head.weight
        return (w.device.type == "cpu" and x.device.type == "cpu" and w.dtype == torch.float32
                and x.dtype == torch.float32 and w.shape[0] >= MIN_VOCAB)

    def drop(self) -> None:
        """Free the packed copy (the next use packs the weight as it is then)."""
        self._key, self._packed, self._sum = None, [], None

    def check(self, head: nn.Module) -> None:
        """Drop the packed copy if the weight's values changed since it was packed (one pass over the weight)."""
        if self._packed:
            if float(head.weight.detach().sum()) != self._sum:
                self.drop()

    @staticmethod
    def _weight_key(w: torch.Tensor) -> tuple:
        return w.data_ptr(), w._version, tuple(w.shape), w.stride()

    def chunks(self, head: nn.Linear, rows: int, batch_hint: int) -> list[torch.Tensor]:
        """The head's weight as packed chunks of `rows` rows (the last may be shorter), packed now if it is not."""
        w = head.weight
        key = (self._weight_key(w), rows)
        if key != self._key:
            self.drop()  # free the old copy before packing the new one
            with torch.no_grad():
                self._packed = [torch.ops.mkldnn._reorder_linear_weight(w[s:s + rows].contiguous(), batch_hint)
                                for s in range(0, w.shape[0], rows)]
                self._sum = float(w.sum())
            self._key, self.rows = key, rows
        return self._packed

    def chunk_logits(self, chunk: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, H) times one packed chunk's rows (transposed), plus `bias` (that chunk's entries): (B, rows)."""
        return torch.ops.mkldnn._linear_pointwise(x, chunk, bias, "none", [], "")

    def __call__(self, head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """head(x) for x (..., H) from the packed copy; call only where `applies(head, x)`."""
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        w = head.weight
        current = self._key is not None and self._key[0] == self._weight_key(w)  # whole, or HRPO's chunks: either serves
        packed = self._packed if current else self.chunks(head, w.shape[0], batch_hint=flat.shape[0])
        b, n = head.bias, self.rows
        outs = [self.chunk_logits(c, flat, None if b is None else b[k * n:(k + 1) * n]) for k, c in enumerate(packed)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return out.reshape(*x.shape[:-1], out.shape[-1])
