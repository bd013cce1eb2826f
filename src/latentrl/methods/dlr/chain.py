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

from latentrl.head_logprobs import lm_head_token_logprobs
from latentrl.methods.dlr.assistant import gaussian_log_prob
from latentrl.methods.dlr.losses import anchor_info_nce, filter_high_value, group_info_nce
from latentrl.optimizer_steps import OptimizerSteps
from latentrl.rewards import correctness_labels
from latentrl.rl.advantages import group_advantages
from latentrl.sampling import normal
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep

__all__ = [
    "ChainAssistant", "ChainThoughtOperator", "CoconutFrame", "FixedChainOperator", "distill_assistant", "distill_loss",
    "dlr_chain_loss", "record_own_thoughts",
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
        self.max_prompt, self.heads = max_prompt, heads
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
        # 1 once the assistant was distilled from the main model's own thoughts (saved with it: a resumed or
        # reloaded assistant is not distilled again)
        self.register_buffer("distilled", torch.tensor(0.0))
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
        real = mask.bool()
        n_real = real.long().sum(1)  # (B,)
        if int(n_real.max()) > self.max_prompt:
            raise ValueError(f"a prompt of {int(n_real.max())} tokens exceeds the assistant's max_prompt "
                             f"{self.max_prompt} (dlr.max_prompt_positions)")
        # padded positions are masked out of attention, but their states must be finite (0 x NaN is NaN): some
        # models (GPT-2 with SDPA) return NaN for fully masked rows
        states = states.float().masked_fill(~real[..., None], 0.0)
        parts = [self.read_prompt(states / self.scale), self.start.expand(B, 1, -1)]
        if z is not None and z.shape[1]:
            parts.append(self.read_latent(z.float() / self.scale))
        x = torch.cat(parts, 1)
        T = x.shape[1]
        # positions count real tokens (as HF's position ids under left padding): a row's means do not depend on
        # how much padding its batch has
        prompt_pos = (real.long().cumsum(1) - 1).clamp_min(0)
        chain_pos = n_real[:, None] + torch.arange(T - P, device=x.device)
        x = x + self.pos[torch.cat([prompt_pos, chain_pos], 1)]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # True = blocked
        pad = ~real
        pad = torch.cat([pad, torch.zeros(B, T - P, dtype=torch.bool, device=pad.device)], 1)
        # a padded position attends to itself only: a query with every key blocked would give NaN, which the next
        # layer would spread (0 x NaN); real positions never see a padded one
        eye = torch.eye(T, dtype=torch.bool, device=x.device)
        blocked = causal[None] | (pad[:, None, :] & ~eye[None])  # (B, T, T)
        out = self.blocks(x, mask=blocked.repeat_interleave(self.heads, 0))
        self.flops += 2 * self.matmul_params() * B * T
        return self.norm(out[:, P:])

    def forward(self, states: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced: (mu (B, L, H), log sigma (L, H)) with mu_l computed from states and z_<l."""
        out = self._encode(states, mask, z[:, : self.num_steps - 1])
        return self.head(out) * self.scale, self.clamped_log_std()

    def next_mean(self, states: torch.Tensor, mask: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """(B, H) mean of the next latent given the chain so far `prev` (B, l, H) (None: the first one)."""
        return self.head(self._encode(states, mask, prev)[:, -1]) * self.scale

    def sample(self, states: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
               deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, mu), each (B, L, H): the chain written step by step (z_l = mu_l when deterministic)."""
        log_std = self.clamped_log_std()
        zs: list[torch.Tensor] = []
        mus: list[torch.Tensor] = []
        for l in range(self.num_steps):
            mu = self.next_mean(states, mask, torch.stack(zs, 1) if zs else None)
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


class ChainThoughtOperator(ThoughtOperator):
    """The rollout engine's view of the assistant: latent step l of a rollout is z_l ~ N(mu_l(S, z_<l), sigma_l^2).

    The engine hands over the frozen main model's prompt states S after its prefill (`begin_rollout`), so the same
    prefill serves the assistant and the main model's KV cache; each step runs the small assistant over
    [S, z_<l] (no cache: L is a handful) and feeds z_l to the main model as its l-th thought. In eval mode the
    chain is the mean (z_l = mu_l). The payload stores z_l (`rebuild` returns it: the main model's input is the
    chain itself). The step's log-density needs S, which the payload does not carry (P x H per position): the DLR
    trainer recomputes log pi(z | S) from its own prefill (`ChainAssistant.log_prob`), not through `log_prob`.
    """

    name = "dlr_chain"
    stochastic = True
    needs_logits = False
    needs_prompt_states = True

    def __init__(self, assistant: ChainAssistant, latent_token_id: int):
        super().__init__()
        self.assistant = assistant
        self.latent_token_id = latent_token_id
        self.deterministic = False
        self._states: torch.Tensor | None = None

    def set_eval_mode(self, deterministic: bool) -> None:
        self.deterministic = deterministic

    def begin_rollout(self, model, prompt_hidden: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        self._states, self._mask = prompt_hidden.float(), prompt_mask
        self._chain: list[torch.Tensor] = []

    def payload_spec(self, model) -> dict[str, PayloadSpec]:
        return {"hidden": PayloadSpec((model.hidden_size,), torch.float32)}

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        if self._states is None:
            raise RuntimeError("ChainThoughtOperator.step before begin_rollout: the engine passes the prompt states")
        l = len(self._chain)
        if l >= self.assistant.num_steps:
            raise RuntimeError(f"the assistant writes {self.assistant.num_steps} thoughts; the schedule asked for "
                               f"more (set latent.num_latent_steps to the main model's thought count)")
        prev = torch.stack(self._chain, 1) if self._chain else None
        mu = self.assistant.next_mean(self._states, self._mask, prev)
        log_std = self.assistant.clamped_log_std()[l]
        z = mu if self.deterministic else mu + log_std.exp() * normal(mu.shape, generator, mu.device, mu.dtype)
        self._chain.append(z)
        B = z.shape[0]
        ids = torch.full((B,), self.latent_token_id, dtype=torch.long, device=z.device)
        return ThoughtStep(embeds=z, token_ids=ids, payload={"hidden": z}, logprob=gaussian_log_prob(z, mu, log_std))

    def rebuild(self, model, token_ids, payload: Payload) -> torch.Tensor:
        return payload["hidden"]

    def log_prob(self, logits, token_ids, payload: Payload) -> torch.Tensor:
        raise NotImplementedError("a chain step's log-density needs the prompt states: use "
                                  "ChainAssistant.log_prob(states, mask, z) (the DLR trainer does)")


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
                 reward_func: Callable[..., list[float | None]] | None = None,
                 prompt_text: Callable[[dict[str, Any]], str] | None = None):
        from latentrl.rewards import correctness_reward
        from latentrl.sft.coconut.data import _latent_ids

        self.model, self.L, self.max_new = model, num_thoughts, max_new_positions
        self.start_id, self.latent_id, self.end_id = _latent_ids(model)
        self.reward_func = reward_func or correctness_reward
        self._prompt_text = prompt_text  # a run's prompt format (default: the Coconut prompt, raw)
        self.main_tokens = 0  # main-model forward positions (compute metric)

    def prompt_text(self, row: dict[str, Any]) -> str:
        from latentrl.sft.coconut import coconut_prompt_text

        if self._prompt_text is not None:
            return self._prompt_text(row)
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
        logp = lm_head_token_logprobs(model.output_head, h.reshape(-1, h.shape[-1]),
                                      ans.reshape(-1)).logprobs.view(ans.shape)  # a chunk of rows at a time
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


ONE_CYCLE_MIN_STEPS = 40
"""Shortest distillation that runs the one-cycle schedule (its warmup phase needs at least 2 steps)."""


@torch.no_grad()
def record_own_thoughts(frame: CoconutFrame, rows: Sequence[dict[str, Any]], batch_size: int = 500
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, states, thoughts) of `rows`: left-padded prompt ids and mask (N, P), the frozen main model's prompt
    states (N, P, H) and its own thoughts (N, L, H), recorded `batch_size` rows at a time (padded to one width)."""
    parts = []
    for s in range(0, len(rows), batch_size):
        ids, mask = frame.tokenize(rows[s : s + batch_size])
        parts.append((ids, mask, frame.prompt_states(ids, mask), frame.own_thoughts(ids, mask)[0]))
    P = max(p[0].shape[1] for p in parts)

    def left(x: torch.Tensor, value: float) -> torch.Tensor:  # left-pad dim 1 to P
        pad = torch.full((x.shape[0], P - x.shape[1], *x.shape[2:]), value, dtype=x.dtype, device=x.device)
        return torch.cat([pad, x], 1)

    pad_id = frame.model.tokenizer.pad_token_id
    return (torch.cat([left(p[0], pad_id) for p in parts]), torch.cat([left(p[1], 0) for p in parts]),
            torch.cat([left(p[2], 0.0) for p in parts]), torch.cat([p[3] for p in parts]))


def distill_assistant(assistant: ChainAssistant, frame: CoconutFrame, rows: Sequence[dict[str, Any]], *,
                      steps: int, batch_size: int, learning_rate: float, noise: float, seed: int,
                      log_every: int = 250) -> list[dict[str, float]]:
    """Set the assistant's scale to the RMS of the main model's own thoughts on `rows`, then (steps > 0) regress its
    teacher-forced means on those thoughts (`distill_loss`; AdamW at a one-cycle schedule — a constant rate below
    ONE_CYCLE_MIN_STEPS steps — gradients clipped at 1, sigma not trained). Marks the assistant distilled. Returns the loss history (every `log_every` steps)."""
    ids, mask, states, thoughts = record_own_thoughts(frame, rows)
    with torch.no_grad():
        assistant.scale.fill_(float(thoughts.pow(2).mean().sqrt()))
    history = [{"step": 0.0, "thought_rms": float(assistant.scale), "rows": float(len(rows))}]
    if steps <= 0:
        return history
    dev = assistant.scale.device
    states, mask, thoughts = states.to(dev), mask.to(dev), thoughts.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    params = [p for n, p in assistant.named_parameters() if n != "log_std" and p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    if steps >= ONE_CYCLE_MIN_STEPS:  # 5 % warmup from lr / 25, then cosine down (the reported runs)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, learning_rate, total_steps=steps, pct_start=0.05)
    else:  # too short for one-cycle's phases (torch divides by zero at 20 steps): a constant rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    fit = OptimizerSteps(params, opt, sched, max_grad_norm=1.0)  # the shared optimizer step, gradients clipped at 1

    def mse(idx: torch.Tensor, share: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = distill_loss(assistant, states[share], mask[share], thoughts[share], noise, gen)
        return loss, {"mse": loss.item()}

    was_training = assistant.training
    assistant.train()
    for step in range(1, steps + 1):  # batches drawn with replacement
        # kept on the device (one process: the share is the batch itself), no host round trip
        idx = torch.randint(0, ids.shape[0], (min(batch_size, ids.shape[0]),), generator=gen, device=dev)
        out = fit.step(mse, idx)
        if step == 1 or step % log_every == 0 or step == steps:
            history.append({"step": float(step), "mse": out.stats["mse"]})
    assistant.train(was_training)
    assistant.distilled.fill_(1.0)
    return history


def dlr_chain_loss(assistant: ChainAssistant, frame: CoconutFrame, ids: torch.Tensor, mask: torch.Tensor,
                   states: torch.Tensor, z: torch.Tensor, rewards: torch.Tensor, ro, K: int, *,
                   pg_coef: float = 1.0, contrastive_coef: float = 0.1, contrastive_temperature: float = 1.0,
                   bidirectional: bool = True, nll_coef: float = 1.0, filter_top_fraction: float = 0.5,
                   filter_min_reward: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """DLR's objective on one batch of P prompts x K sampled chains (rows grouped contiguously).

    * filter: `filter_high_value` (top fraction of each group, strictly above its worst) = the kept chains;
    * policy gradient: -A_i log pi(z_i | S) / (L H), A = group-relative advantage (all rows);
    * contrastive: InfoNCE with anchor = the prompt's deterministic (mean) chain, positives = kept samples,
      negatives = the rest (similarity -||a - z||^2 / (L H scale^2)); plus the prompt-level direction;
    * decoding likelihood: NLL of each kept row's answer given the prompt's MEAN chain, through the frozen main
      model (gradients into the chain only) — it moves the chain the main model actually reads at evaluation.
    `ids`, `mask`, `states` are per row (P*K rows). Returns (loss, metrics)."""
    N, L, H = z.shape
    keep = filter_high_value(rewards, K, filter_top_fraction, filter_min_reward).to(z.device)
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
        elif nll_coef > 0:
            m["dlr/nll"] = 0.0  # nothing kept: the term is 0 (still logged)
    return loss, m
