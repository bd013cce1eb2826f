"""Coconut batches and the KV-cached multi-pass forward (BPTT through every thought, or LatR's no-BPTT)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from latentrl.head_logprobs import lm_head_token_logprobs
from latentrl.model import LatentModel
from latentrl.sft.coconut.config import IGNORE_INDEX
from latentrl.sft.coconut.data import CoconutSample
from latentrl.sft.coconut.distill import DistillIndex, distill_index, distill_loss, teacher_states
from latentrl.thoughts.hidden_state import project_thought


@dataclasses.dataclass
class CoconutBatch:
    """Rows aligned so that every row's first thought is in column `latent_start` (left padding), right-padded."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) long
    position_ids: torch.Tensor  # (B, T): 0.. from each row's first real token (0 on left padding)
    labels: torch.Tensor  # (B, T), -100 where no loss
    latent_start: int
    num_latent: torch.Tensor  # (B,) thoughts per row, in columns latent_start .. latent_start + n - 1
    probe_labels: torch.Tensor | None = None  # (B, T): thought-probe target of the output at a thought column
    probe_head_labels: torch.Tensor | None = None  # (B, T, K): the K linear probe heads' targets at a thought column
    distill: DistillIndex | None = None  # the distillation teacher's rows and the column pairs to align

    def to(self, device) -> "CoconutBatch":
        return dataclasses.replace(
            self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device), labels=self.labels.to(device),
            num_latent=self.num_latent.to(device),
            probe_labels=self.probe_labels.to(device) if self.probe_labels is not None else None,
            probe_head_labels=self.probe_head_labels.to(device) if self.probe_head_labels is not None else None,
            distill=self.distill.to(device) if self.distill is not None else None,
        )

    @property
    def latent_mask(self) -> torch.Tensor:
        """(B, T) bool: the thought positions."""
        cols = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        rel = cols[None, :] - self.latent_start
        return (rel >= 0) & (rel < self.num_latent[:, None])


def collate_coconut(samples: Sequence[CoconutSample], pad_id: int) -> CoconutBatch:
    """Left-pad each row by `max(latent_start) - latent_start` so the thoughts line up, then right-pad."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    start = max(s.latent_start for s in samples)
    width = max(start - s.latent_start + len(s.input_ids) for s in samples)
    B = len(samples)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        off, n = start - s.latent_start, len(s.input_ids)
        ids[i, off : off + n] = torch.as_tensor(s.input_ids)
        mask[i, off : off + n] = 1
        pos[i, off : off + n] = torch.arange(n)
        labels[i, off : off + n] = torch.as_tensor(s.labels)
    num = torch.as_tensor([s.num_latent for s in samples], dtype=torch.long)
    probe = None
    if any(t != IGNORE_INDEX for s in samples for t in s.probe):
        probe = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(samples):
            if s.probe:
                probe[i, start : start + len(s.probe)] = torch.as_tensor(s.probe)
    heads = None
    if any(t != IGNORE_INDEX for s in samples for row in s.probe_heads for t in row):
        k = max(len(row) for s in samples for row in s.probe_heads)
        heads = torch.full((B, width, k), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(samples):
            if s.probe_heads:
                heads[i, start : start + len(s.probe_heads)] = torch.as_tensor(s.probe_heads)
    distill = None
    if any(s.teacher_ids for s in samples):
        offsets = [start - s.latent_start for s in samples]
        distill = distill_index(samples, offsets, pad_id)
    return CoconutBatch(ids, mask, pos, labels, start, num, probe, heads, distill)


@dataclasses.dataclass
class CoconutOutput:
    loss: torch.Tensor  # summed CE / normalizer
    num_tokens: int
    token_accuracy: float
    num_forwards: int
    thought_norm: float  # mean L2 norm of the thoughts (0 without thoughts)
    hidden: torch.Tensor | None = None  # (B, T, H) last hidden states, if asked for
    probe_loss: float = float("nan")  # mean thought-probe cross-entropy (nan without probe targets)
    probe_accuracy: float = float("nan")
    probe_head_loss: float = float("nan")  # mean linear-probe cross-entropy (nan without probe-head targets)
    probe_head_accuracy: float = float("nan")
    distill_loss: float = float("nan")  # hidden-state distillation loss (nan without a teacher)


def _thought_passes(
    model: LatentModel,
    embeds: torch.Tensor,
    batch: CoconutBatch,
    *,
    run_tail: bool,
    layer_chunks: list[tuple[torch.Tensor, ...]] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """The KV-cached passes. Returns (hidden chunks covering the columns run, thoughts (B, n_max, H), #forwards).

    Thought p of a row (0-based) is the hidden state the model produced at column latent_start + p - 1 (through
    the model's thought projection, if it has one: `latentrl.thoughts.hidden_state.project_thought`). Rows with
    fewer thoughts get their token embedding in those columns. With `run_tail` the last pass runs every remaining
    column (the chunks then cover [0, T)); otherwise it stops once the last thought is formed. With `layer_chunks`
    (a list, appended to) every pass also hands out its states after each layer, chunk by chunk like the hidden
    chunks.
    """

    def run(x, **kw):
        if layer_chunks is None:
            _, h, c = model.forward_embeds(x, compute_logits=False, **kw)
            return h, c
        layers, c = model.forward_embeds_layers(x, **kw)
        layer_chunks.append(layers[1:])
        return layers[-1], c

    L0 = batch.latent_start
    n = batch.num_latent
    n_max = int(n.max()) if n.numel() else 0
    attn, pos = batch.attention_mask, batch.position_ids
    chunks: list[torch.Tensor] = []
    thoughts: list[torch.Tensor] = []
    if n_max == 0:
        if run_tail:
            h, _ = run(embeds, attention_mask=attn, position_ids=pos)
            chunks.append(h)
        return chunks, embeds.new_zeros((embeds.shape[0], 0, embeds.shape[2])), int(run_tail)
    cache = DynamicCache()
    h, cache = run(embeds[:, :L0], attention_mask=attn[:, :L0], position_ids=pos[:, :L0], past_key_values=cache,
                   use_cache=True)
    forwards = 1
    chunks.append(h)
    col = L0
    # the input of column `col`: a thought for rows that have one there, else the token embedding
    pending = torch.where((n > 0)[:, None], project_thought(model, h[:, -1]).to(embeds.dtype), embeds[:, col])
    thoughts.append(pending)
    for p in range(1, n_max):
        h, cache = run(pending[:, None], attention_mask=attn[:, : col + 1], position_ids=pos[:, col : col + 1],
                       past_key_values=cache, use_cache=True)
        forwards += 1
        chunks.append(h)
        col += 1
        pending = torch.where((n > p)[:, None], project_thought(model, h[:, -1]).to(embeds.dtype), embeds[:, col])
        thoughts.append(pending)
    if run_tail:
        tail = torch.cat([pending[:, None], embeds[:, col + 1 :]], dim=1)
        h, _ = run(tail, attention_mask=attn, position_ids=pos[:, col:], past_key_values=cache, use_cache=True)
        forwards += 1
        chunks.append(h)
    return chunks, torch.stack(thoughts, dim=1), forwards


def _insert_thoughts(embeds: torch.Tensor, thoughts: torch.Tensor, latent_start: int) -> torch.Tensor:
    """`embeds` with columns latent_start .. latent_start + n_max - 1 replaced by `thoughts` (no in-place write)."""
    n_max = thoughts.shape[1]
    if n_max == 0:
        return embeds
    return torch.cat([embeds[:, :latent_start], thoughts.to(embeds.dtype), embeds[:, latent_start + n_max :]], dim=1)


def coconut_forward(
    model: LatentModel,
    batch: CoconutBatch,
    *,
    bptt: bool = True,
    normalizer: float | None = None,
    return_hidden: bool = False,
    probe_weight: float = 0.0,
    probe_heads: nn.Module | None = None,
    teacher: LatentModel | None = None,
    distill_weight: float = 0.0,
) -> CoconutOutput:
    """Cross-entropy of a Coconut batch, with thoughts formed by the KV-cached multi-pass forward.

    `bptt=True`: n_max + 1 forwards, the graph kept through every thought. `bptt=False` (LatR): n_max forwards under
    no_grad to form the thoughts, then one full forward over the sequence with the thoughts as constants.
    The loss is the *sum* of token cross-entropies divided by `normalizer` (default: this batch's label count), so
    gradient accumulation can divide by the label count of the whole optimizer step. With `probe_weight` > 0 and
    probe labels in the batch, `probe_weight` x the mean thought-probe cross-entropy (scaled by this batch's share
    of `normalizer`) is added (see `CoconutConfig.probe_tokens`). With `probe_heads` (a Linear from the hidden
    size to K x vocab) and probe-head labels, the same is done for the linear probe (`probe_head_tokens`). With a
    `teacher` and distillation pairs in the batch, `distill_weight` x the hidden-state distillation loss
    (`latentrl.sft.coconut.distill`) is added the same way.
    """
    batch = batch.to(model.device)
    embeds = model.embed(batch.input_ids)
    distill = teacher is not None and batch.distill is not None
    layers: list[torch.Tensor] = []  # with a teacher: the states after every layer, (B, T, H) each
    if bptt:
        layer_chunks: list[tuple[torch.Tensor, ...]] | None = [] if distill else None
        chunks, thoughts, forwards = _thought_passes(model, embeds, batch, run_tail=True, layer_chunks=layer_chunks)
        if layer_chunks:  # the last layer's states are the hidden states: one concatenation, not two
            layers = [torch.cat(per_layer, dim=1) for per_layer in zip(*layer_chunks)]
            hidden = layers[-1]
        else:
            hidden = torch.cat(chunks, dim=1)
    else:
        with torch.no_grad():
            _, thoughts, forwards = _thought_passes(model, embeds.detach(), batch, run_tail=False)
        # rows without a thought in a column carry the token embedding there: take it from the live embeddings
        n_max = thoughts.shape[1]
        if n_max:
            live = embeds[:, batch.latent_start : batch.latent_start + n_max]
            has = batch.latent_mask[:, batch.latent_start : batch.latent_start + n_max]
            thoughts = torch.where(has[..., None], thoughts.detach().to(live.dtype), live)
        full = _insert_thoughts(embeds, thoughts, batch.latent_start)
        if not distill:
            _, hidden, _ = model.forward_embeds(full, attention_mask=batch.attention_mask,
                                                position_ids=batch.position_ids, compute_logits=False)
        else:
            states, _ = model.forward_embeds_layers(full, attention_mask=batch.attention_mask,
                                                    position_ids=batch.position_ids)
            layers, hidden = list(states[1:]), states[-1]
        forwards += 1
    # logits only where a label follows: hidden at t predicts labels[t + 1]
    target = batch.labels[:, 1:]
    sel = target != IGNORE_INDEX
    count = int(sel.sum())
    if count == 0:
        raise ValueError("no target tokens in the batch (all labels are -100)")
    gold = target[sel]
    # the head runs a chunk of positions at a time (no (count x V) logits: gigabytes at V = 151,936)
    scores = lm_head_token_logprobs(model.output_head, hidden[:, :-1][sel], gold, max_logprob=True)
    loss_sum = -scores.logprobs.sum()
    loss = loss_sum / (normalizer if normalizer is not None else count)
    probe_loss = probe_acc = float("nan")
    if batch.probe_labels is not None:
        psel = batch.probe_labels != IGNORE_INDEX
        if bool(psel.any()):
            plogits = model.lm_head(hidden[psel]).float()
            pgold = batch.probe_labels[psel]
            pce = F.cross_entropy(plogits, pgold)
            if probe_weight > 0:
                loss = loss + probe_weight * pce * (count / (normalizer if normalizer is not None else count))
            probe_loss = float(pce.detach())
            probe_acc = float((plogits.argmax(-1) == pgold).float().mean())
    head_loss = head_acc = float("nan")
    if probe_heads is not None and batch.probe_head_labels is not None:
        hl = batch.probe_head_labels  # (B, T, K)
        rows = (hl != IGNORE_INDEX).any(-1)
        if bool(rows.any()):
            k = hl.shape[-1]
            hlogits = probe_heads(hidden[rows].float()).view(-1, k, probe_heads.out_features // k)
            hgold = hl[rows]
            hsel = hgold != IGNORE_INDEX
            hce = F.cross_entropy(hlogits[hsel], hgold[hsel])
            if probe_weight > 0:
                loss = loss + probe_weight * hce * (count / (normalizer if normalizer is not None else count))
            head_loss = float(hce.detach())
            head_acc = float((hlogits[hsel].argmax(-1) == hgold[hsel]).float().mean())
    dist = float("nan")
    if distill:
        d = distill_loss(layers, batch.distill, teacher_states(teacher, batch.distill))
        if distill_weight > 0:
            loss = loss + distill_weight * d * (count / (normalizer if normalizer is not None else count))
        dist = float(d.detach())
    with torch.no_grad():
        acc = float((scores.logprobs >= scores.max_logprob).float().mean())
        lat = batch.latent_mask[:, batch.latent_start : batch.latent_start + thoughts.shape[1]]
        norm = float(thoughts[lat].float().norm(dim=-1).mean()) if bool(lat.any()) else 0.0
    return CoconutOutput(loss, count, acc, forwards, norm, hidden if return_hidden else None, probe_loss, probe_acc,
                         head_loss, head_acc, dist)
