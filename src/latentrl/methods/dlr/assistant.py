"""The DLR assistant: a small Gaussian policy over latent reasoning-chain encodings, and its exact log-density.

Our reading of "a lightweight assistant model samples K reasoning-chain encodings within the latent space"
(arXiv 2601.17275; the abstract gives no architecture). For a prompt with feature h (the frozen main model's
last-layer hidden state at the last prompt position, a constant):

    mu_phi(h)  = MLP(LayerNorm(h))  reshaped to (L, d_z)          the mean chain (the contrastive anchor)
    sigma      = exp(max(log_sigma, log min_std))  (L, d_z)        state-independent, learned or fixed
    z          = mu + sigma * eps,  eps ~ N(0, I)                   one sampled chain encoding (L vectors in R^d_z)
    e_l        = W z_l + b                                          projected into the main model's embedding space

    log pi_phi(z | h) = sum_{l=1..L} sum_{j=1..d_z} [ -(z_lj - mu_lj)^2 / (2 sigma_lj^2) - log sigma_lj - log(2 pi)/2 ]

(the diagonal Gaussian log-density, summed over dimensions and steps; `tests/test_dlr.py` checks it against
`torch.distributions.Normal`). The projection (W, b) belongs to the assistant and is trained with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from latentrl.sampling import normal

if TYPE_CHECKING:
    from latentrl.methods.dlr.config import DLRConfig
    from latentrl.model import LatentModel

__all__ = ["ASSISTANT", "LatentAssistant", "build_assistant", "gaussian_log_prob", "gaussian_entropy"]

ASSISTANT = "dlr_assistant"
"""Name of the assistant among the main model's side modules (saved with `LatentModel.save_pretrained`)."""

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_std))^2), summed over the last dimension. Shapes broadcast."""
    return (-0.5 * ((z - mean) * torch.exp(-log_std)) ** 2 - log_std - _HALF_LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Per-dimension differential entropy of N(., sigma^2): log sigma + (1 + log 2 pi) / 2 (same shape)."""
    return log_std + 0.5 + _HALF_LOG_2PI


class LatentAssistant(nn.Module):
    """mu_phi (an MLP over a prompt feature), log sigma, and the projection W z + b into the main embedding space.

    `flops` counts the forward matmul FLOPs (2 x weights x rows) of every call, for the compute metrics; the
    trainer reads and resets it each step.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        num_steps: int,
        latent_dim: int,
        hidden_size: int = 128,
        layers: int = 2,
        init_std: float = 1.0,
        learn_std: bool = True,
        min_std: float = 0.01,
        projection_scale: float = 0.5,
        embed_norm: float = 1.0,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        self.num_steps, self.latent_dim, self.min_std = num_steps, latent_dim, min_std
        self.norm = nn.LayerNorm(input_size)
        mods: list[nn.Module] = []
        prev = input_size
        for _ in range(layers):
            mods += [nn.Linear(prev, hidden_size), nn.GELU()]
            prev = hidden_size
        out = nn.Linear(prev, num_steps * latent_dim)
        with torch.no_grad():  # start with mu ~ 0: the first chains are pure exploration noise around the bias
            out.weight.mul_(0.1)
            out.bias.zero_()
        mods.append(out)
        self.mlp = nn.Sequential(*mods)
        self.log_std = nn.Parameter(torch.full((num_steps, latent_dim), math.log(init_std)), requires_grad=learn_std)
        self.proj = nn.Linear(latent_dim, output_size)
        with torch.no_grad():
            # RMS ||W z|| = s * sigma * sqrt(H d_z) for W ~ N(0, s^2), z ~ N(0, sigma^2): set it to scale * ||E row||
            s = projection_scale * embed_norm / (init_std * math.sqrt(output_size * latent_dim))
            self.proj.weight.normal_(0.0, s)
            self.proj.bias.copy_(bias if bias is not None else torch.zeros(output_size))
        self.flops = 0

    # ---- sizes (matmul weights only: what the 2 x params x rows FLOP estimate counts)
    @property
    def mlp_matmul_params(self) -> int:
        return sum(m.weight.numel() for m in self.mlp if isinstance(m, nn.Linear))

    @property
    def proj_matmul_params(self) -> int:
        return self.proj.weight.numel()

    # ---- the policy
    def clamped_log_std(self) -> torch.Tensor:
        """(L, d_z) log sigma, clamped below at log(min_std)."""
        return self.log_std.clamp(min=math.log(self.min_std))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt features (B, H_main) -> (mean chains (B, L, d_z), log sigma (L, d_z)), in float32."""
        self.flops += 2 * self.mlp_matmul_params * h.shape[0]
        mu = self.mlp(self.norm(h.float())).view(h.shape[0], self.num_steps, self.latent_dim)
        return mu, self.clamped_log_std()

    def sample(self, h: torch.Tensor, generator: torch.Generator | None = None, deterministic: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, mu, log sigma): z = mu + sigma * eps (z = mu if deterministic); eps is drawn on mu's device with a
        generator that must live there too (`latentrl.sampling.normal`), so no noise is uploaded per rollout."""
        mu, log_std = self(h)
        if deterministic:
            return mu, mu, log_std
        eps = normal(mu.shape, generator, mu.device, mu.dtype)
        return mu + log_std.exp() * eps, mu, log_std

    def log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B,) log pi(z | h) of whole chains z (B, L, d_z), summed over steps and dimensions."""
        mu, log_std = self(h)
        return gaussian_log_prob(z.float(), mu, log_std).sum(-1)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Latent vectors (..., d_z) -> main-model input embeddings (..., H_main): W z + b."""
        self.flops += 2 * self.proj_matmul_params * (z.numel() // z.shape[-1])
        return self.proj(z.float())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_assistant(model: "LatentModel", cfg: "DLRConfig") -> LatentAssistant:
    """An assistant sized for `model` (the frozen main model): reads its hidden size, writes its embedding space."""
    with torch.no_grad():
        E = model.embedding_matrix.float()
        embed_norm = float(E.norm(dim=-1).mean())
        bias = E.mean(0) if cfg.latent_bias_init == "mean_embedding" else None
    return LatentAssistant(
        model.hidden_size, model.hidden_size, cfg.num_latent_steps, cfg.latent_dim,
        hidden_size=cfg.assistant_hidden_size, layers=cfg.assistant_layers, init_std=cfg.init_std,
        learn_std=cfg.learn_std, min_std=cfg.min_std, projection_scale=cfg.projection_scale,
        embed_norm=embed_norm, bias=None if bias is None else bias.cpu(),
    )
