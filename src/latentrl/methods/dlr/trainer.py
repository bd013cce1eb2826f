"""`DLRTrainer`: method `dlr` (our reading 2 of arXiv 2601.17275) on the shared trainer's loop.

    prompts ─▶ rollout engine: frozen main model prefill ─▶ the assistant reads its prompt states and writes the
            thoughts z_1..z_L ~ N(mu_l(S, z_<l), sigma_l^2) at the main model's own thought positions
            (`ChainThoughtOperator`) ─▶ <|end-latent|> ─▶ the main model decodes the answer greedily (one pass)
            ─▶ reward ─▶ group advantages + high-value filter
            ─▶ PG + InfoNCE around the mean chain + decoding NLL of kept answers (`dlr_chain_loss`), assistant only

Only `prepare`, `loss_pieces` and `step_metrics` differ from GRPOTrainer (plus `FrozenMainTrainer`'s shared parts): data order, rewards,
logging, evaluation, checkpoints and resume are its. The main model is frozen, so `prepare` recomputes its prompt
states once (no grad) and the assistant's exact log-density log pi(z | S) of the stored chains follows from them.
The distillation of the main model's own thoughts runs once before the first step (`DLR.on_train_begin`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from latentrl.methods import register_trainer
from latentrl.methods.dlr.chain import CoconutFrame, dlr_chain_loss
from latentrl.methods.dlr.frozen_main import FrozenMainTrainer
from latentrl.methods.dlr.method import CHAIN_ASSISTANT
from latentrl.rl.batch import StepBatch
from latentrl.rl.trainer import LossPiece

__all__ = ["DLRTrainer"]


@dataclass
class ChainBatch:
    """`prepare`'s output: the batch, its chains (N, L, H) and the frozen main model's prompt states (N, P, H)."""

    batch: StepBatch
    z: torch.Tensor
    states: torch.Tensor


@register_trainer("dlr")
class DLRTrainer(FrozenMainTrainer):
    """GRPOTrainer with DLR's update. `trainer = DLRTrainer(cfg, model, train_examples)`; `trainer.train()`."""

    default_method = "dlr"
    assistant_module = CHAIN_ASSISTANT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frame = CoconutFrame(self.model, self.assistant.num_steps, self.args.max_completion_length,
                                  prompt_text=self.prompt_text)

    @torch.no_grad()
    def prepare(self, batch: StepBatch) -> ChainBatch:
        """The chains read back from the rollouts and the prompt states the assistant read."""
        ro, L = batch.rollout, self.assistant.num_steps
        if ro.completion_ids.shape[1] <= L or not bool(ro.latent_mask[:, :L].all()):
            raise RuntimeError(f"DLR rollouts must start with exactly {L} thoughts")
        z = ro.payload["hidden"][:, :L].float()
        before = self.frame.main_tokens
        states = self.frame.prompt_states(ro.prompt_ids, ro.prompt_mask)
        self.ctx.compute_tokens["forward"] += self.frame.main_tokens - before
        return ChainBatch(batch, z, states)

    @torch.no_grad()
    def chain_logprobs(self, batch: StepBatch) -> torch.Tensor:
        """(N,) log pi(z | S) of the stored chains recomputed as the update sees them: equals the sum of the
        rollout's per-thought log-densities (the generic token replay cannot score a thought, whose density
        depends on every prompt state)."""
        ro, L = batch.rollout, self.assistant.num_steps
        states = self.frame.prompt_states(ro.prompt_ids, ro.prompt_mask)
        return self.assistant.log_prob(states, ro.prompt_mask, ro.payload["hidden"][:, :L].float())

    def replay_gap(self, batch: StepBatch) -> float:
        """The largest relative gap |log pi(z | S) - rollout's| / (1 + |rollout's|) of the stored chains (a chain's
        log-density sums L x H terms, so its float rounding scales with its size)."""
        ref = batch.rollout.logprobs[:, : self.assistant.num_steps].sum(-1)
        return float(((self.chain_logprobs(batch) - ref).abs() / (1 + ref.abs())).max())

    def loss_pieces(self, prepared: ChainBatch) -> Iterator[LossPiece]:
        """One piece: DLR's whole-batch objective."""
        self.assistant.train()
        yield functools.partial(self._loss, prepared)

    def _loss(self, p: ChainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        c, ro = self.dlr, p.batch.rollout
        rewards = p.batch.rewards
        before = self.frame.main_tokens
        loss, m = dlr_chain_loss(
            self.assistant, self.frame, ro.prompt_ids, ro.prompt_mask, p.states, p.z, rewards, ro, self.G,
            pg_coef=c.pg_coef, contrastive_coef=c.contrastive_coef, contrastive_temperature=c.contrastive_temperature,
            bidirectional=c.bidirectional, nll_coef=c.nll_coef, filter_top_fraction=c.filter_top_fraction,
            filter_min_reward=c.filter_min_reward,
        )
        nll_tokens = self.frame.main_tokens - before  # the NLL's forward through the frozen main model ...
        self.ctx.compute_tokens["forward"] += nll_tokens
        self.ctx.compute_tokens["backward"] += nll_tokens  # ... and its activation gradients (~1 forward)
        return loss, m

    def step_metrics(self, batch: StepBatch, prepared: ChainBatch) -> dict[str, float]:
        s = self.assistant.scale
        return {"latent/norm_mean": prepared.z.norm(dim=-1).mean().item(),
                "dlr/sigma_rel": float((self.assistant.clamped_log_std().detach().exp() / s).mean())}
