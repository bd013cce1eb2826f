"""Coconut batches and the KV-cached multi-pass forward (BPTT through every thought, or LatR's no-BPTT)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from latentrl.model import LatentModel
from latentrl.sft.coconut.config import IGNORE_INDEX
from latentrl.sft.coconut.data import CoconutSample


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

    def to(self, device) -> "CoconutBatch":
        return dataclasses.replace(
            self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device), labels=self.labels.to(device),
            num_latent=self.num_latent.to(device),
            probe_labels=self.probe_labels.to(device) if self.probe_labels is not None else None,
            probe_head_labels=self.probe_head_labels.to(device) if self.probe_head_labels is not None else None,
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
    return CoconutBatch(ids, mask, pos, labels, start, num, probe, heads)


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


def _thought_passes(
    model: LatentModel,
    embeds: torch.Tensor,
    batch: CoconutBatch,
    *,
    run_tail: bool,
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """The KV-cached passes. Returns (hidden chunks covering the columns run, thoughts (B, n_max, H), #forwards).

    Thought p of a row (0-based) is the hidden state the model produced at column latent_start + p - 1. Rows with
    fewer thoughts get their token embedding in those columns. With `run_tail` the last pass runs every remaining
    column (the chunks then cover [0, T)); otherwise it stops once the last thought is formed.
    """
    L0 = batch.latent_start
    n = batch.num_latent
    n_max = int(n.max()) if n.numel() else 0
    attn, pos = batch.attention_mask, batch.position_ids
    chunks: list[torch.Tensor] = []
    thoughts: list[torch.Tensor] = []
    if n_max == 0:
        if run_tail:
            _, h, _ = model.forward_embeds(embeds, attention_mask=attn, position_ids=pos, compute_logits=False)
            chunks.append(h)
        return chunks, embeds.new_zeros((embeds.shape[0], 0, embeds.shape[2])), int(run_tail)
    cache = DynamicCache()
    _, h, cache = model.forward_embeds(embeds[:, :L0], attention_mask=attn[:, :L0], position_ids=pos[:, :L0],
                                       past_key_values=cache, use_cache=True, compute_logits=False)
    forwards = 1
    chunks.append(h)
    col = L0
    # the input of column `col`: a thought for rows that have one there, else the token embedding
    pending = torch.where((n > 0)[:, None], h[:, -1].to(embeds.dtype), embeds[:, col])
    thoughts.append(pending)
    for p in range(1, n_max):
        _, h, cache = model.forward_embeds(pending[:, None], attention_mask=attn[:, : col + 1],
                                           position_ids=pos[:, col : col + 1], past_key_values=cache,
                                           use_cache=True, compute_logits=False)
        forwards += 1
        chunks.append(h)
        col += 1
        pending = torch.where((n > p)[:, None], h[:, -1].to(embeds.dtype), embeds[:, col])
        thoughts.append(pending)
    if run_tail:
        tail = torch.cat([pending[:, None], embeds[:, col + 1 :]], dim=1)
        _, h, _ = model.forward_embeds(tail, attention_mask=attn, position_ids=pos[:, col:], past_key_values=cache,
                                       use_cache=True, compute_logits=False)
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
) -> CoconutOutput:
    """Cross-entropy of a Coconut batch, with thoughts formed by the KV-cached multi-pass forward.

    `bptt=True`: n_max + 1 forwards, the graph kept through every thought. `bptt=False` (LatR): n_max forwards under
    no_grad to form the thoughts, then one full forward over the sequence with the thoughts as constants.
    The loss is the *sum* of token cross-entropies divided by `normalizer` (default: this batch's label count), so
    gradient accumulation can divide by the label count of the whole optimizer step. With `probe_weight` > 0 and
    probe labels in the batch, `probe_weight` x the mean thought-probe cross-entropy (scaled by this batch's share
    of `normalizer`) is added (see `CoconutConfig.probe_tokens`). With `probe_heads` (a Linear from the hidden
    size to K x vocab) and probe-head labels, the same is done for the linear probe (`probe_head_tokens`).
    """
    batch = batch.to(model.device)
    embeds = model.embed(batch.input_ids)
    if bptt:
        chunks, thoughts, forwards = _thought_passes(model, embeds, batch, run_tail=True)
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
        _, hidden, _ = model.forward_embeds(full, attention_mask=batch.attention_mask,
                                            position_ids=batch.position_ids, compute_logits=False)
        forwards += 1
    # logits only where a label follows: hidden at t predicts labels[t + 1]
    target = batch.labels[:, 1:]
    sel = target != IGNORE_INDEX
    count = int(sel.sum())
    if count == 0:
        raise ValueError("no target tokens in the batch (all labels are -100)")
    logits = model.lm_head(hidden[:, :-1][sel]).float()
    gold = target[sel]
    loss_sum = F.cross_entropy(logits, gold, reduction="sum")
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
    with torch.no_grad():
        acc = float((logits.argmax(-1) == gold).float().mean())
        lat = batch.latent_mask[:, batch.latent_start : batch.latent_start + thoughts.shape[1]]
        norm = float(thoughts[lat].float().norm(dim=-1).mean()) if bool(lat.any()) else 0.0
    return CoconutOutput(loss, count, acc, forwards, norm, hidden if return_hidden else None, probe_loss, probe_acc,
                         head_loss, head_acc)
