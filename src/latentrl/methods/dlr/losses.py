"""DLR's filter and objective terms, as small pure tensor functions (groups are contiguous rows, as everywhere).

* `filter_high_value`    — the dual-reward filter: which trajectories of a group are "high-value" (positives).
* `group_info_nce`       — InfoNCE, direction 1: the group's anchor (mean chain mu) against its kept (positive) and
                           dropped (negative) sampled chains.
* `anchor_info_nce`      — InfoNCE, direction 2: each kept chain against the anchors of every prompt in the batch.
* `policy_gradient_loss` — group-relative advantage x log-density of the sampled chain (optionally ratio-clipped).
* `matmul_params`, `forward_flops` — the 2 x params x tokens compute estimate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from latentrl.compute import forward_flops, matmul_params  # re-exported: DLR's compute metrics use them

__all__ = [
    "filter_high_value", "similarity", "group_info_nce", "anchor_info_nce", "policy_gradient_loss", "matmul_params",
    "forward_flops",
]


def filter_high_value(rewards: torch.Tensor, num_generations: int, top_fraction: float = 0.5,
                      min_reward: float | None = None) -> torch.Tensor:
    """(N,) bool: the kept ("high-value") trajectories of each group of `num_generations` contiguous rows.

    A row is kept iff its reward is >= the ceil(top_fraction * K)-th largest reward of its group (ties at the
    boundary are all kept), strictly greater than the group's lowest reward (a group whose rewards are all equal
    keeps nothing: nothing to contrast), and >= `min_reward` when given. NaN rewards are never kept.
    """
    K = num_generations
    if rewards.dim() != 1 or rewards.numel() % K:
        raise ValueError(f"rewards must be (N,) with N a multiple of {K}, got shape {tuple(rewards.shape)}")
    r = rewards.float().view(-1, K)
    finite = ~torch.isnan(r)
    hi = torch.where(finite, r, torch.full_like(r, float("-inf")))
    lo = torch.where(finite, r, torch.full_like(r, float("inf")))
    k = min(K, max(1, math.ceil(top_fraction * K)))
    kth = hi.topk(k, dim=1).values[:, -1:]
    keep = finite & (r >= kth) & (r > lo.amin(dim=1, keepdim=True))
    if min_reward is not None:
        keep &= r >= min_reward
    return keep.view(-1)


def similarity(anchor: torch.Tensor, x: torch.Tensor, kind: str = "neg_sq_dist") -> torch.Tensor:
    """Similarity over the last dim (broadcast): neg_sq_dist = -mean((a - x)^2), or cosine."""
    if kind == "neg_sq_dist":
        return -((anchor - x) ** 2).mean(-1)
    if kind == "cosine":
        return F.cosine_similarity(anchor, x, dim=-1, eps=1e-8)
    raise ValueError(f"unknown similarity {kind!r}; allowed: neg_sq_dist, cosine")


def group_info_nce(anchors: torch.Tensor, samples: torch.Tensor, positive: torch.Tensor, temperature: float,
                   kind: str = "neg_sq_dist") -> tuple[torch.Tensor, int]:
    """Direction 1. anchors (P, D), samples (P, K, D) (constants), positive (P, K) bool.

    For each positive j of group g, with s_x = sim(anchor_g, x) / tau and N_g the group's negatives:
        l_gj = -log( exp(s_j) / (exp(s_j) + sum_{n in N_g} exp(s_n)) )
    The group's loss is the mean over its positives; the result is the mean over groups with at least one
    positive and one negative (0 if there are none), and the number of such groups.
    """
    s = similarity(anchors[:, None, :], samples, kind) / temperature  # (P, K)
    pos = positive.bool()
    neg_lse = torch.where(pos, torch.full_like(s, float("-inf")), s).logsumexp(dim=1, keepdim=True)  # (P, 1)
    per = -(s - torch.logaddexp(s, neg_lse))  # (P, K); meaningful at positives
    valid = pos.any(1) & (~pos).any(1)
    n_pos = pos.sum(1).clamp_min(1)
    per_group = torch.where(pos, per, torch.zeros_like(per)).sum(1) / n_pos
    n = int(valid.sum())
    if n == 0:
        return s.sum() * 0.0, 0
    return per_group[valid].sum() / n, n


def anchor_info_nce(anchors: torch.Tensor, samples: torch.Tensor, positive: torch.Tensor, temperature: float,
                    kind: str = "neg_sq_dist") -> tuple[torch.Tensor, int]:
    """Direction 2. Each positive chain z of group g classifies its own prompt's anchor among all P anchors:
        l = -log( exp(sim(anchor_g, z)/tau) / sum_{g'} exp(sim(anchor_g', z)/tau) )
    Mean over positives (0 when P < 2 or there are none), and the number of positives used."""
    P, K, D = samples.shape
    pos = positive.bool()
    if P < 2 or not bool(pos.any()):
        return anchors.sum() * 0.0, 0
    s = similarity(anchors[None, None, :, :], samples[:, :, None, :], kind) / temperature  # (P, K, P')
    target = torch.arange(P, device=s.device)[:, None].expand(P, K)
    ce = F.cross_entropy(s[pos], target[pos], reduction="mean")
    return ce, int(pos.sum())


def policy_gradient_loss(logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, kind: str,
                         epsilon_low: float, epsilon_high: float, num_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) per-chain surrogate divided by num_dims (= L * d_z), and (N,) bool "ratio was clipped".

    reinforce: -A * log pi(z);  clipped: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = exp(lp - lp_old).
    At the first update of a rollout batch r = 1 and both give the gradient A * grad log pi(z) / num_dims.
    """
    if kind == "reinforce":
        return -advantages * logprob / num_dims, torch.zeros_like(advantages, dtype=torch.bool)
    if kind != "clipped":
        raise ValueError(f"unknown policy loss {kind!r}; allowed: clipped, reinforce")
    ratio = torch.exp(logprob - old_logprob)
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    return loss / num_dims, (ratio * advantages) > (clipped * advantages)
