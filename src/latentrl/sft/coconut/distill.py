"""Hidden-state distillation for Coconut (after CODI): the states that predict the language after the thoughts are
pulled, layer by layer, toward a frozen CoT teacher's states predicting the same tokens after the full chain.

Cross-entropy tells a stage only whether the next language step came out right; the teacher's states say *how* a
model that read the chain as language represents it at every layer, which is what reading the thoughts must
reproduce. Alignment is by token: the column whose next token is tail token j in the student (after
`<|end-latent|>`) is paired with the column whose next token is the same token in the teacher's `prompt + steps +
answer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from latentrl.config import ConfigError
from latentrl.model import LatentModel, LatentTokens
from latentrl.sft.coconut.data import CoconutSample


@dataclasses.dataclass
class DistillIndex:
    """The teacher's batch and, per row, P column pairs (student column, teacher column) predicting the same token."""

    teacher_ids: torch.Tensor  # (B, Tt) right-padded
    teacher_mask: torch.Tensor  # (B, Tt)
    student_cols: torch.Tensor  # (B, P) columns of the collated student batch
    teacher_cols: torch.Tensor  # (B, P)
    valid: torch.Tensor  # (B, P) bool: False on padding pairs

    def to(self, device) -> "DistillIndex":
        return DistillIndex(*(t.to(device) for t in dataclasses.astuple(self)))


def distill_index(samples: Sequence[CoconutSample], offsets: Sequence[int], pad_id: int) -> DistillIndex:
    """Pairs for every sample: its `tail_len` tokens after `<|end-latent|>` end both sequences, so the column
    predicting tail token j is `offset + len(input_ids) - tail_len - 1 + j` in the student (left-padded by
    `offset`) and `len(teacher_ids) - tail_len - 1 + j` in the teacher."""
    if any(not s.teacher_ids for s in samples):
        raise ValueError("every sample of a distillation batch needs its teacher_ids")
    B, P = len(samples), max(s.tail_len for s in samples)
    width = max(len(s.teacher_ids) for s in samples)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    scols = torch.zeros((B, P), dtype=torch.long)
    tcols = torch.zeros((B, P), dtype=torch.long)
    valid = torch.zeros((B, P), dtype=torch.bool)
    for i, (s, off) in enumerate(zip(samples, offsets)):
        t = s.teacher_ids
        if s.teacher_ids[len(t) - s.tail_len :] != s.input_ids[len(s.input_ids) - s.tail_len :]:
            raise ValueError(f"sample {i}: the teacher's chain does not end with the student's language tail")
        ids[i, : len(t)] = torch.as_tensor(t)
        mask[i, : len(t)] = 1
        j = torch.arange(s.tail_len)
        scols[i, : s.tail_len] = off + len(s.input_ids) - s.tail_len - 1 + j
        tcols[i, : s.tail_len] = len(t) - s.tail_len - 1 + j
        valid[i, : s.tail_len] = True
    return DistillIndex(ids, mask, scols, tcols, valid)


def load_teacher(path: str, student: LatentModel) -> LatentModel:
    """The frozen teacher at `path`, on the student's device; refused unless it reads text with the student's
    vocabulary (the latent tokens aside) and has its width and depth."""
    teacher = LatentModel.from_pretrained(path).to(student.device).eval()
    teacher.model.requires_grad_(False)
    latent = set(LatentTokens().as_list())
    vocab = [{k: v for k, v in m.tokenizer.get_vocab().items() if k not in latent} for m in (teacher, student)]
    if vocab[0] != vocab[1]:
        raise ConfigError(f"distill_teacher {path!r} has another vocabulary than the model ({len(vocab[0])} vs "
                          f"{len(vocab[1])} tokens, latent tokens aside): the teacher must read the same token ids")
    shape = [(m.hidden_size, m.model.config.num_hidden_layers) for m in (teacher, student)]
    if shape[0] != shape[1]:
        raise ConfigError(f"distill_teacher {path!r} has hidden size and depth {shape[0]}, the model {shape[1]}: "
                          "distillation pairs layer with layer")
    return teacher


@torch.no_grad()
def teacher_states(teacher: LatentModel, index: DistillIndex) -> list[torch.Tensor]:
    """The frozen teacher's hidden states after each layer (not the embeddings) at its paired columns, (B, P, H)."""
    embeds = teacher.embed(index.teacher_ids)
    layers, _ = teacher.forward_embeds_layers(embeds, attention_mask=index.teacher_mask)
    rows = torch.arange(index.teacher_cols.shape[0], device=index.teacher_cols.device)[:, None]
    return [h[rows, index.teacher_cols] for h in layers[1:]]


def distill_loss(student_layers: Sequence[torch.Tensor], index: DistillIndex,
                 targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the mean squared difference between student and teacher states at the paired columns,
    both divided by the teacher layer's standard deviation over those states (so every layer weighs alike).
    `student_layers`: the student's states after each layer, (B, T, H); `targets`: `teacher_states`."""
    if len(student_layers) != len(targets):
        raise ValueError(f"the student has {len(student_layers)} layers and the teacher {len(targets)}: distillation "
                         "needs a teacher of the same depth")
    sel = index.valid
    rows = torch.arange(sel.shape[0], device=sel.device)[:, None].expand_as(sel)[sel]
    cols = index.student_cols[sel]
    total = student_layers[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_layers, targets):
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"hidden sizes differ (student {s.shape[-1]}, teacher {t.shape[-1]}): distillation needs "
                             "a teacher of the same width")
        tgt = t[sel].float()
        scale = tgt.std().clamp_min(1e-6)
        total = total + ((s[rows, cols].float() - tgt) / scale).pow(2).mean()
    return total / len(student_layers)
