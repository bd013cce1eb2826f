"""DLR with a latent-reading main model: an autoregressive assistant that writes the main model's thoughts.

Our second reading of DLR (arXiv 2601.17275; docs/methods/dlr.md, "Reading 2"). The first reading (an MLP over
one pooled prompt state, its chain as a prefix of a CoT-SFT model) scores ~0-2 %: a model trained on text never
learned to read a prefix of free vectors. Here the frozen main model is a checkpoint that already reads continuous
thoughts (a Coconut latent init, e.g. the shipped `chain_sum-coconut`: prompt + `<|start-latent|>`, L thoughts,
`<|end-latent|>`, then the answer), and the assistant's chain is placed where the main model's own thoughts go:

    frozen main prefill of [prompt, <|start-latent|>]  ->  S (B, P, H): the prompt tokens' last-layer states
    assistant (a small causal transformer over [A S, B z_1 .. B z_{l-1}]):   mu_l = head(out_l)        (l = 1..L)
    z_l = mu_l + sigma_l * eps_l  (Gaussian head; z_l is fed back: the chain is written autoregressively)
    main model reads [prompt, <|start-latent|>, z_1 .. z_L, <|end-latent|>] and decodes the answer in one pass

    log pi(z | S) = sum_l log N(z_l; mu_l(S, z_<l), diag sigma_l^2)       (exact; teacher-forced recomputation)

z_l lives directly in the main model's input-embedding space (H), where its own thoughts live, so the assistant can
be initialised by *distilling the main model's own thoughts* (regression, `distill_loss`), then trained with DLR's
objective (`dlr_chain_loss`: group-relative policy gradient + InfoNCE around the mean chain + the decoding
likelihood of reward-kept answers through the frozen main model). Everything here trains the assistant only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from latentrl.dlr.assistant import gaussian_log_prob
from latentrl.dlr.losses import anchor_info_nce, filter_high_value, group_info_nce
from latentrl.rewards import correctness_labels
from latentrl.rl.advantages import group_advantages
from latentrl.sampling import normal
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep

__all__ = [
    "ChainAssistant", "FixedChainOperator", "CoconutFrame", "distill_loss", "dlr_chain_loss",
]


class ChainAssistant(nn.Module):
    """A small causal transformer that reads prompt states and writes L latent vectors (Gaussian head).

    `forward(states, mask, z)` is the teacher-forced pass: means mu (B, L, H) of every step given the chain z
    (B, L, H) (only z_<l enters mu_l). `sample` writes a chain autoregressively (L small passes). `flops` counts
    2 x matmul weights x positions of every pass (the compute metrics).
    """

    def __init__(self, main_hidden: int, num_steps: int, width: int = 96, layers: int = 2, heads: int = 4,
                 ffn: int = 192, max_prompt: int = 64, init_std: float = 0.05, learn_std: bool = True,
                 min_std: float = 1e-3, thought_scale: float = 1.0):
        super().__init__()
        self.main_hidden, self.num_steps, self.width, self.min_std = main_hidden, num_steps, width, min_std
        self.max_prompt = max_prompt
        self.read_prompt = nn.Linear(main_hidden, width)
        self.read_latent = nn.Linear(main_hidden, width)
        self.pos = nn.Parameter(torch.zeros(max_prompt + num_steps + 1, width))
        self.start = nn.Parameter(torch.zeros(width))  # the input that asks for z_1
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.start, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, main_hidden)
        # thoughts' scale: inputs are divided by it, means multiplied by it (distillation targets are O(1) inside)
        self.register_buffer("scale", torch.tensor(float(thought_scale)))
        self.log_std = nn.Parameter(torch.full((num_steps, main_hidden), math.log(init_std)),
                                    requires_grad=learn_std)
        self.flops = 0

    def matmul_params(self) -> int:
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear)) + sum(
            m.in_proj_weight.numel() for m in self.modules() if isinstance(m, nn.MultiheadAttention))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def clamped_log_std(self) -> torch.Tensor:
        """(L, H) log sigma in the main embedding space (sigma_l = scale * exp(log_std_l))."""
        return self.log_std.clamp(min=math.log(self.min_std)) + torch.log(self.scale)

    def _encode(self, states: torch.Tensor, mask: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Outputs at the L' = 1 + len(z) chain positions (the last predicts the next latent)."""
        B, P, _ = states.shape
        if P > self.max_prompt:
            raise ValueError(f"prompt of {P} positions exceeds the assistant's max_prompt {self.max_prompt}")
        parts = [self.read_prompt(states.float() / self.scale), self.start.expand(B, 1, -1)]
        if z is not None and z.shape[1]:
            parts.append(self.read_latent(z.float() / self.scale))
        x = torch.cat(parts, 1)
        T = x.shape[1]
        x = x + self.pos[:T]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # True = blocked
        pad = ~mask.bool()
        pad = torch.cat([pad, torch.zeros(B, T - P, dtype=torch.bool, device=pad.device)], 1)
        out = self.blocks(x, mask=causal, src_key_padding_mask=pad)
        self.flops += 2 * self.matmul_params() * B * T
        return self.norm(out[:, P:])

    def forward(self, states: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced: (mu (B, L, H), log sigma (L, H)) with mu_l computed from states and z_<l."""
        out = self._encode(states, mask, z[:, : self.num_steps - 1])
        return self.head(out) * self.scale, self.clamped_log_std()

    def sample(self, states: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
               deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, mu), each (B, L, H): the chain written step by step (z_l = mu_l when deterministic)."""
        log_std = self.clamped_log_std()
        zs: list[torch.Tensor] = []
        mus: list[torch.Tensor] = []
        for l in range(self.num_steps):
            prev = torch.stack(zs, 1) if zs else None
            mu = self.head(self._encode(states, mask, prev)[:, -1]) * self.scale
            if deterministic:
                z = mu
            else:
                z = mu + log_std[l].exp() * normal(mu.shape, generator, mu.device, mu.dtype)
            zs.append(z)
            mus.append(mu)
        return torch.stack(zs, 1), torch.stack(mus, 1)

    def log_prob(self, states: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B,) exact log pi(z | S) of whole chains, summed over steps and dimensions."""
        mu, log_std = self(states, mask, z)
        return gaussian_log_prob(z.float(), mu, log_std).sum(-1)


class FixedChainOperator(ThoughtOperator):
    """Emits a given chain (N, L, H) at the L latent positions of a rollout of the same N rows (in order).

    Used to decode the assistant's chains with the frozen main model through the shared rollout engine (and with
    `thought_dependence`, whose swap intervention wraps it). Rows are consumed `rows_per_rollout` at a time when the
    engine is called on slices; by default the whole chain batch is one rollout.
    """

    name = "fixed_chain"
    stochastic = False
    needs_logits = False

    def __init__(self, chain: torch.Tensor, latent_token_id: int):
        super().__init__()
        self.chain = chain.detach()
        self.latent_token_id = latent_token_id
        self.t = 0
        self.offset = 0

    def set_eval_mode(self, deterministic: bool) -> None:
        self.t = 0

    def payload_spec(self, model) -> dict[str, PayloadSpec]:
        return {"hidden": PayloadSpec((self.chain.shape[-1],), torch.float32)}

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        B = hidden.shape[0]
        if self.t >= self.chain.shape[1]:
            self.t = 0
        e = self.chain[self.offset : self.offset + B, self.t].to(hidden.device, hidden.dtype)
        if e.shape[0] != B:
            raise RuntimeError(f"chain has {self.chain.shape[0]} rows, the rollout asks for rows "
                               f"{self.offset}..{self.offset + B}")
        self.t += 1
        ids = torch.full((B,), self.latent_token_id, dtype=torch.long, device=hidden.device)
        return ThoughtStep(embeds=e, token_ids=ids, payload={"hidden": e.float()}, logprob=None)

    def rebuild(self, model, token_ids, payload: Payload) -> torch.Tensor:
        return payload["hidden"]


class CoconutFrame:
    """The frozen latent-reading main model's frame: Coconut prompt text, prompt states, own thoughts, decoding."""

    def __init__(self, model, num_thoughts: int, max_new_positions: int = 16,
                 reward_func: Callable[..., list[float | None]] | None = None):
        from latentrl.rewards import correctness_reward
        from latentrl.sft.coconut.data import _latent_ids

        self.model, self.L, self.max_new = model, num_thoughts, max_new_positions
        self.start_id, self.latent_id, self.end_id = _latent_ids(model)
        self.reward_func = reward_func or correctness_reward
        self.main_tokens = 0  # main-model forward positions (compute metric)

    def prompt_text(self, row: dict[str, Any]) -> str:
        from latentrl.sft.coconut import coconut_prompt_text

        return coconut_prompt_text(row, self.model.latent_tokens.start)

    def tokenize(self, rows: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        from latentrl.rollout import left_pad

        tok = self.model.tokenizer
        return left_pad([tok(self.prompt_text(r), add_special_tokens=False)["input_ids"] for r in rows],
                        tok.pad_token_id, device=self.model.device)

    @torch.no_grad()
    def prompt_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, P, H) last-layer states of the frozen main model over [prompt, <|start-latent|>] (constants)."""
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        _, hidden, _ = self.model.forward_embeds(self.model.embed(ids), attention_mask=mask.long(), position_ids=pos,
                                                 compute_logits=False)
        self.main_tokens += ids.numel()
        return hidden.float()

    def schedule(self):
        from latentrl.sft.coconut import coconut_schedule

        return coconut_schedule(self.model, self.L)

    @torch.no_grad()
    def own_thoughts(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(B, L, H) the main model's own continuous thoughts for these prompts, and its own greedy rollout."""
        from latentrl.rollout import SamplingParams, generate_rollout
        from latentrl.sft.coconut import coconut_operator
        from latentrl.thought_dependence import ThoughtIntervention

        rec = ThoughtIntervention(coconut_operator(self.model), "record")
        ro = generate_rollout(self.model, ids, mask, SamplingParams(max_new_positions=self.max_new, temperature=0.0),
                              rec, self.schedule())
        self.main_tokens += ids.shape[0] * (ids.shape[1] + ro.completion_ids.shape[1])
        return torch.stack(rec.inputs, 1).float(), ro

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, mask: torch.Tensor, chain: torch.Tensor):
        """Greedy single-pass decoding of the answer after the given chain (B, L, H): the rollout."""
        from latentrl.rollout import SamplingParams, generate_rollout

        op = FixedChainOperator(chain, self.latent_id)
        ro = generate_rollout(self.model, ids, mask, SamplingParams(max_new_positions=self.max_new, temperature=0.0),
                              op, self.schedule())
        self.main_tokens += ids.shape[0] * (ids.shape[1] + ro.completion_ids.shape[1])
        return ro

    def score(self, rows: Sequence[dict[str, Any]], ro) -> tuple[list[str], torch.Tensor]:
        """(completions, (N,) correctness in {0, 1}) of a rollout of `rows`."""
        from latentrl.rollout import decode_completions

        texts = decode_completions(self.model, ro)
        return texts, correctness_labels(self.reward_func, rows, texts)

    def answer_nll(self, ids: torch.Tensor, mask: torch.Tensor, chain: torch.Tensor, ro) -> torch.Tensor:
        """(B,) mean NLL of the rollout's answer tokens (after `<|end-latent|>`) given [prompt, chain], with
        gradients into `chain` only (the main model's parameters are frozen)."""
        model, L = self.model, self.L
        ans = ro.completion_ids[:, L + 1 :]
        amask = ro.completion_mask[:, L + 1 :]
        end = torch.full((ids.shape[0], 1), self.end_id, dtype=torch.long, device=ids.device)
        emb = torch.cat([model.embed(ids), chain.to(model.embedding_matrix.dtype), model.embed(end), model.embed(ans)], 1)
        full_mask = torch.cat([mask.long(), torch.ones(ids.shape[0], L + 1, dtype=torch.long, device=ids.device),
                               amask.long()], 1)
        pos = (full_mask.cumsum(-1) - 1).clamp_min(0)
        _, hidden, _ = model.forward_embeds(emb, attention_mask=full_mask, position_ids=pos, compute_logits=False)
        self.main_tokens += emb.shape[0] * emb.shape[1]
        P = ids.shape[1]
        h = hidden[:, P + L : P + L + ans.shape[1]]  # position of <|end-latent|> predicts the first answer token
        logp = model.lm_head(h).float().log_softmax(-1).gather(-1, ans[..., None]).squeeze(-1)
        tok = amask.float()
        return -(logp * tok).sum(-1) / tok.sum(-1).clamp_min(1)


def distill_loss(assistant: ChainAssistant, states: torch.Tensor, mask: torch.Tensor, thoughts: torch.Tensor,
                 noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Regression of the assistant's teacher-forced means on the main model's own thoughts (MSE in units of the
    thoughts' scale). `noise` perturbs the fed-back thoughts (relative to the scale) against exposure bias."""
    inp = thoughts
    if noise > 0:
        inp = thoughts + noise * assistant.scale * normal(thoughts.shape, generator, thoughts.device)
    mu, _ = assistant(states, mask, inp)
    return ((mu - thoughts) / assistant.scale).pow(2).mean()


def dlr_chain_loss(assistant: ChainAssistant, frame: CoconutFrame, ids: torch.Tensor, mask: torch.Tensor,
                   states: torch.Tensor, z: torch.Tensor, rewards: torch.Tensor, ro, K: int, *,
                   pg_coef: float = 1.0, contrastive_coef: float = 0.1, contrastive_temperature: float = 1.0,
                   bidirectional: bool = True, nll_coef: float = 1.0, filter_top_fraction: float = 0.5,
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """DLR's objective on one batch of P prompts x K sampled chains (rows grouped contiguously).

    * filter: `filter_high_value` (top fraction of each group, strictly above its worst) = the kept chains;
    * policy gradient: -A_i log pi(z_i | S) / (L H), A = group-relative advantage (all rows);
    * contrastive: InfoNCE with anchor = the prompt's deterministic (mean) chain, positives = kept samples,
      negatives = the rest (similarity -||a - z||^2 / (L H scale^2)); plus the prompt-level direction;
    * decoding likelihood: NLL of each kept row's answer given the prompt's MEAN chain, through the frozen main
      model (gradients into the chain only) — it moves the chain the main model actually reads at evaluation.
    `ids`, `mask`, `states` are per row (P*K rows). Returns (loss, metrics)."""
    N, L, H = z.shape
    keep = filter_high_value(rewards, K, filter_top_fraction).to(z.device)
    adv = group_advantages(rewards.float(), K)[0].to(z.device)  # GRPO's (r - mean) / (std + 1e-4), per group
    m: dict[str, float] = {"dlr/kept_frac": float(keep.float().mean())}
    loss = z.sum() * 0.0
    if pg_coef > 0:
        lp = assistant.log_prob(states, mask, z)
        pg = -(adv * lp).mean() / (L * H)
        loss = loss + pg_coef * pg
        m["dlr/pg_loss"] = pg.item()
    need_mean = contrastive_coef > 0 or nll_coef > 0
    if need_mean:
        first = torch.arange(0, N, K, device=z.device)
        _, mu = assistant.sample(states[first], mask[first], deterministic=True)  # (P, L, H), with gradients
        s = assistant.scale
        if contrastive_coef > 0:
            pos = keep.view(-1, K)
            anchors = (mu / s).reshape(-1, L * H)
            samples = (z / s).reshape(-1, K, L * H)
            nce, ng = group_info_nce(anchors, samples, pos, contrastive_temperature)
            term = nce
            if bidirectional:
                nce2, _ = anchor_info_nce(anchors, samples, pos, contrastive_temperature)
                term = term + nce2
                m["dlr/contrastive_anchor_loss"] = nce2.item()
            loss = loss + contrastive_coef * term
            m["dlr/contrastive_loss"] = nce.item()
            m["dlr/contrastive_groups"] = float(ng)
        if nll_coef > 0 and bool(keep.any()):
            idx = keep.nonzero().squeeze(-1)
            group = idx // K
            nll = frame.answer_nll(ids[idx], mask[idx], mu[group], ro.select(idx.to(ro.completion_ids.device))).mean()
            loss = loss + nll_coef * nll
            m["dlr/nll"] = nll.item()
    return loss, m
