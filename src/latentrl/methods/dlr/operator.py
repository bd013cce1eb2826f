"""The DLR thought operator: the first L completion positions replay the assistant's latent chain.

It plugs DLR into the shared rollout engine (`generate_rollout`) with `ThinkingSchedule(num_latent_steps=L)`:

* at the first latent step of a rollout the operator reads the main model's last prompt hidden state (the engine
  passes it as `hidden`), asks the assistant for a chain z (B, L, d_z) — sampled, or the mean mu in eval mode —
  and emits e_1 = W z_1 + b; the next L-1 calls emit e_2..e_L and ignore the logits (the main model only decodes);
* a chain can also be given explicitly with `begin(z=..., h=...)` (decoding a chosen latent prefix);
* the payload stores z_l, the prompt feature h and the step index l, so `rebuild` (W z_l + b with current
  weights) and `log_prob` (the Gaussian log-density of z_l under the current mu_phi(h)_l, sigma_l) are exact.

The engine calls `step` exactly L times per rollout (every row starts latent and has the same L), so the chain
position is a counter that restarts after L calls; `reset()` / `set_eval_mode()` also restart it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from latentrl.methods.dlr.assistant import LatentAssistant, gaussian_log_prob
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep

if TYPE_CHECKING:
    from latentrl.model import LatentModel

__all__ = ["AssistantThoughtOperator"]


class AssistantThoughtOperator(ThoughtOperator):
    name = "dlr_assistant"
    stochastic = True
    needs_logits = False  # the step and its log-density read the prompt state and the assistant, not the logits

    def __init__(self, assistant: LatentAssistant):
        super().__init__()
        self.assistant = assistant
        self.deterministic = False
        self.reset()

    @property
    def num_steps(self) -> int:
        return self.assistant.num_steps

    def reset(self) -> None:
        """Forget the current chain: the next `step` starts a new one."""
        self._z: torch.Tensor | None = None
        self._h: torch.Tensor | None = None
        self._pos = 0
        self._explicit = False

    def set_eval_mode(self, deterministic: bool) -> None:
        self.deterministic = deterministic
        self.reset()

    def begin(self, z: torch.Tensor, h: torch.Tensor | None = None) -> None:
        """Use the chain z (B, L, d_z) for the next rollout; h (B, H) is stored as the prompt feature (for
        `log_prob`; default: the hidden state the engine passes at the first step)."""
        if z.dim() != 3 or z.shape[1:] != (self.num_steps, self.assistant.latent_dim):
            raise ValueError(f"z must be (B, {self.num_steps}, {self.assistant.latent_dim}), got {tuple(z.shape)}")
        self.reset()
        self._z, self._h, self._explicit = z.float(), None if h is None else h.float(), True

    def payload_spec(self, model: "LatentModel") -> dict[str, PayloadSpec]:
        return {
            "z": PayloadSpec((self.assistant.latent_dim,), torch.float32),
            "prompt_hidden": PayloadSpec((model.hidden_size,), torch.float32),
            "step": PayloadSpec((), torch.long),
        }

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        B = hidden.shape[0]
        if self._pos >= self.num_steps or (self._z is not None and self._z.shape[0] != B):
            self.reset()
        if self._pos == 0:  # a new chain: one assistant forward for all L steps
            h = hidden.float() if self._h is None else self._h.to(hidden.device)
            if self._explicit:
                self._mu, self._log_std = self.assistant(h)
                self._z = self._z.to(hidden.device)
            else:
                self._z, self._mu, self._log_std = self.assistant.sample(h, generator, deterministic=self.deterministic)
            self._h = h
        i = self._pos
        z_i = self._z[:, i]
        step = torch.full((B,), i, dtype=torch.long, device=hidden.device)
        payload = {"z": z_i, "prompt_hidden": self._h, "step": step}
        logprob = gaussian_log_prob(z_i, self._mu[:, i], self._log_std[i])
        self._pos += 1
        ids = model.latent_ids.latent if model.latent_ids is not None else model.tokenizer.pad_token_id
        return ThoughtStep(self.rebuild(model, None, payload), torch.full_like(step, ids), payload, logprob)

    def rebuild(self, model, token_ids, payload: Payload) -> torch.Tensor:
        return self.assistant.project(payload["z"])

    def log_prob(self, logits, token_ids, payload: Payload) -> torch.Tensor:
        """(N,) log N(z_l; mu_phi(h)_l, sigma_l^2) of N stored latent steps (the logits are not used)."""
        mu, log_std = self.assistant(payload["prompt_hidden"])
        step = payload["step"].long()
        rows = torch.arange(step.shape[0], device=step.device)
        return gaussian_log_prob(payload["z"].float(), mu[rows, step], log_std[step])
