"""`DLRPrefixTrainer`: reading 1 of DeepLatent Reasoning (method `dlr_prefix`; our first reading of arXiv 2601.17275:
an MLP assistant writes a latent prefix for a frozen CoT model; docs/methods/dlr.md, "Reading 1").

    prompts ─▶ rollout engine: frozen main model prefill ─▶ assistant samples K chains z ~ N(mu_phi(h), sigma^2)
            ─▶ L latent prefix positions W z + b ─▶ main model decodes the answer (one pass, KV cache)
            ─▶ dual reward (correctness + format, weighted) ─▶ group advantages + high-value filter
            ─▶ [num_iterations ×] contrastive + policy-gradient (+ entropy, + decoding NLL) on the ASSISTANT only

The main model is frozen (`requires_grad_(False)`, never in the optimizer): the update needs no main-model forward
at all unless `nll_coef > 0`, because the stored prompt feature h and chain z determine the assistant's
log-density. Data order, rewards, dynamic sampling, logging, checkpoints and resume are GRPOTrainer's. With several
processes the rollouts are split over them (GRPOTrainer's chunks) and every process runs this whole-batch update
on the gathered batch, so the replicas stay identical without a gradient all-reduce.
Evaluation is every method's: `trainer.evaluate(rows, k)`, or `latentrl.eval.evaluate(model, rows,
**get_method("dlr_prefix").build(model, cfg).eval_kwargs(cfg))` without a trainer (greedy Pass@1 decodes the mean chain
mu; Pass@k samples chains).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from latentrl.head_logprobs import lm_head_token_logprobs
from latentrl.methods import register_trainer
from latentrl.methods.dlr.assistant import ASSISTANT, gaussian_entropy, gaussian_log_prob
from latentrl.methods.dlr.frozen_main import FrozenMainTrainer
from latentrl.methods.dlr.losses import (
    anchor_info_nce,
    filter_high_value,
    group_info_nce,
    policy_gradient_loss,
)
from latentrl.rl.batch import StepBatch
from latentrl.rl.trainer import LossPiece

__all__ = ["DLRPrefixTrainer", "DLRChains"]


@dataclass
class DLRPrepared:
    """DLR's `prepare` output: the whole batch, its chains and the high-value filter's kept rows."""

    batch: StepBatch
    chains: "DLRChains"
    keep: torch.Tensor


class DLRChains:
    """The latent chains of a rollout batch, read back from the operator's payload."""

    def __init__(self, batch: StepBatch, L: int):
        ro = batch.rollout
        if ro.completion_ids.shape[1] < L or not bool(ro.latent_mask[:, :L].all()):
            raise RuntimeError(f"DLR rollouts must start with exactly {L} latent positions")
        self.z = ro.payload["z"][:, :L].float()  # (N, L, d_z)
        self.h = ro.payload["prompt_hidden"][:, 0].float()  # (N, H)
        self.old_logprob = ro.logprobs[:, :L].sum(-1)  # (N,) log pi_old(z | h)


@register_trainer("dlr_prefix")
class DLRPrefixTrainer(FrozenMainTrainer):
    """GRPOTrainer with reading 1's update. `trainer = DLRPrefixTrainer(cfg, model, train_examples)`; `trainer.train()`."""

    default_method = "dlr_prefix"
    assistant_module = ASSISTANT

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def generate_and_score(self, prompt_rows: list[dict[str, Any]], round_: int = 0) -> StepBatch:
        self.operator.reset()
        return super().generate_and_score(prompt_rows, round_=round_)

    # ------------------------------------------------------------------ the objective
    def dlr_loss(self, batch: StepBatch, chains: DLRChains, keep: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """Contrastive + policy-gradient + entropy terms (everything but the decoding NLL), over the whole batch."""
        c, a = self.dlr, self.args
        G, L, d = self.G, c.num_latent_steps, c.latent_dim
        mu, log_std = self.assistant(chains.h)  # (N, L, d), (L, d)
        loss = mu.sum() * 0.0
        m: dict[str, float] = {}
        # contrastive: anchor = the group's mean chain (all rows of a group share the prompt, so the same mu)
        if c.contrastive_coef > 0:
            anchors = mu.view(-1, G, L * d)[:, 0]
            samples = chains.z.view(-1, G, L * d)
            pos = keep.view(-1, G)
            nce, n_groups = group_info_nce(anchors, samples, pos, c.contrastive_temperature, c.contrastive_similarity)
            m["dlr/contrastive_groups"] = float(n_groups)
            m["dlr/contrastive_loss"] = nce.item()
            term = nce
            if c.bidirectional:
                nce2, _ = anchor_info_nce(anchors, samples, pos, c.contrastive_temperature, c.contrastive_similarity)
                m["dlr/contrastive_anchor_loss"] = nce2.item()
                term = term + nce2
            loss = loss + c.contrastive_coef * term
        # policy gradient on the sampled chains' log-density
        if c.pg_coef > 0:
            lp = gaussian_log_prob(chains.z, mu, log_std).sum(-1)  # (N,)
            adv = batch.advantages.to(lp.device).float()
            per, clipped = policy_gradient_loss(lp, chains.old_logprob.to(lp.device), adv, a.policy_loss, a.epsilon,
                                                a.epsilon_high if a.epsilon_high is not None else a.epsilon, L * d)
            rows = keep if c.pg_filtered_only else torch.ones_like(keep)
            pg = (per * rows).sum() / rows.sum().clamp_min(1)
            loss = loss + c.pg_coef * pg
            m["dlr/pg_loss"] = pg.item()
            m["dlr/logprob_per_dim"] = lp.mean().item() / (L * d)
            m["clip_ratio/region_mean"] = float(clipped.float().mean())
        if c.entropy_coef > 0:
            ent = gaussian_entropy(log_std).mean()
            loss = loss - c.entropy_coef * ent
        m["dlr/std_mean"] = log_std.exp().mean().item()
        m["dlr/mu_rms"] = mu.pow(2).mean().sqrt().item()
        m["dlr/entropy_per_dim"] = gaussian_entropy(log_std).mean().item()
        return loss, m

    def nll_pieces(self, batch: StepBatch, keep: torch.Tensor, chains: DLRChains, weight: float
                   ) -> Iterator[LossPiece]:
        """Decoding-likelihood term, one loss piece per micro-batch of kept rows (their sum is the term).

        For each kept row: the frozen main model reads [prompt, W mu_phi(h) + b, answer tokens] (the MEAN chain, not
        the sample) and the loss is the mean NLL of the row's decoded answer tokens (at T = 1). Gradients reach mu
        and W through the frozen main model's activations; its parameters have requires_grad False.
        """
        idx = keep.nonzero().squeeze(-1)
        n = idx.numel()
        if n == 0:  # nothing kept: the term is 0 (still logged)
            yield lambda: (torch.zeros(()), {"dlr/nll": 0.0})
            return
        ro = batch.rollout.select(idx)
        mb = self.args.per_device_train_batch_size
        for s in range(0, n, mb):
            yield functools.partial(self._nll_piece, ro.select(torch.arange(s, min(s + mb, n))), chains.h[idx][s : s + mb],
                                    weight * min(mb, n - s) / n, min(mb, n - s) / n)

    def _nll_piece(self, part, h: torch.Tensor, weight: float, share: float) -> tuple[torch.Tensor, dict[str, float]]:
        mu, _ = self.assistant(h)
        nll = self._answer_nll(part, self.assistant.project(mu))
        return weight * nll, {"dlr/nll": nll.item() * share}

    def _answer_nll(self, ro, latents: torch.Tensor) -> torch.Tensor:
        """Mean over rows of the mean token NLL of the discrete completion positions after the L latents."""
        model, L = self.model, self.dlr.num_latent_steps
        B, P = ro.prompt_ids.shape
        C = ro.completion_ids.shape[1]
        emb = model.embed(ro.prompt_ids)
        embeds = torch.cat([emb, latents.to(emb.dtype), model.embed(ro.completion_ids[:, L:])], dim=1)
        mask = torch.cat([ro.prompt_mask, ro.completion_mask], dim=1).long()
        position = (mask.cumsum(-1) - 1).clamp_min(0)
        _, hidden, _ = model.forward_embeds(embeds, attention_mask=mask, position_ids=position, compute_logits=False)
        self.ctx.compute_tokens["forward"] += B * (P + C)
        self.ctx.compute_tokens["backward"] += B * (P + C)  # activation gradients only: ~1 forward
        h = hidden[:, P + L - 1 : P + C - 1]  # predicts completion positions L .. C-1
        tgt = ro.completion_ids[:, L:]
        lp = lm_head_token_logprobs(model.output_head, h.reshape(-1, h.shape[-1]),
                                    tgt.reshape(-1)).logprobs.view(tgt.shape)  # a chunk of rows at a time
        tok = (ro.completion_mask[:, L:] & ~ro.latent_mask[:, L:]).float()
        per_row = -(lp * tok).sum(-1) / tok.sum(-1).clamp_min(1)
        return per_row.mean()

    # ------------------------------------------------------------------ the update (GRPOTrainer's loop)
    def prepare(self, batch: StepBatch) -> DLRPrepared:
        """The chains read back from the rollouts, and which rows the high-value filter keeps."""
        c = self.dlr
        chains = DLRChains(batch, c.num_latent_steps)
        keep = filter_high_value(batch.rewards, self.G, c.filter_top_fraction, c.filter_min_reward)
        if self.args.mask_truncated_completions:
            keep &= ~batch.rollout.truncated.to(keep.device)
        return DLRPrepared(batch, chains, keep.to(chains.z.device))

    def loss_pieces(self, prepared: DLRPrepared) -> Iterator[LossPiece]:
        """Contrastive + policy gradient + entropy over the whole batch, then the decoding NLL of the kept rows
        micro-batch by micro-batch (when `nll_coef` > 0)."""
        self.assistant.train()
        yield functools.partial(self.dlr_loss, prepared.batch, prepared.chains, prepared.keep)
        if self.dlr.nll_coef > 0:
            yield from self.nll_pieces(prepared.batch, prepared.keep, prepared.chains, self.dlr.nll_coef)

    def step_metrics(self, batch: StepBatch, prepared: DLRPrepared) -> dict[str, float]:
        keep, flops = prepared.keep, self.assistant.flops
        with torch.no_grad():
            latent_norm = self.assistant.project(prepared.chains.z).norm(dim=-1).mean().item()
        self.assistant.flops = flops  # the metric above is not part of the method's compute
        return {
            "latent/norm_mean": latent_norm,
            "dlr/kept_frac": float(keep.float().mean()),
            "dlr/kept_reward": float(batch.rewards[keep.cpu()].mean()) if bool(keep.any()) else float("nan"),
            "dlr/groups_with_kept": float(keep.view(-1, self.G).any(1).float().mean()),
        }
