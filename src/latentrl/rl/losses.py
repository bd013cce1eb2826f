"""Policy-gradient losses as small pure tensor functions, in registries (verl ``core_algos.py`` style), with TRL's
names and semantics (``trl/trainer/grpo_trainer.py::_compute_loss``).

The pipeline for one micro-batch is::

    per_token, clip = per_token_policy_loss(lp, old_lp, adv, kind="clipped", epsilon_low=0.2, epsilon_high=0.28)
    if beta:
        per_token = per_token + beta * kl_penalty(lp, ref_lp, kind="k3")
    loss = aggregate_loss(per_token, mask, "dapo", num_tokens=tokens_in_whole_accumulated_batch)
    metrics = {k: masked_mean(v, mask) for k, v in clip.items()}   # clip_ratio/low_mean, ...

Every position gets a log-prob from the replay scorer (the ordinary token log-prob for a discrete step, a
method-specific density or surrogate for a latent step), so this file is the same for every method; methods differ
only in which policy-loss *kind* each position uses (:func:`mixed_policy_loss`).

Gradient accumulation (GA) convention: :func:`aggregate_loss` normalises by *global* counts that the caller passes
(``num_sequences``, ``num_tokens``), so the **sum** of the losses of the k micro-batches of an optimizer step equals
the loss (and gradient) of the whole batch for ``grpo`` / ``dr_grpo`` / ``dapo``. The caller must therefore *not*
divide by the number of accumulation steps again. ``bnpo`` (TRL: token mean of each micro-batch) is by definition
not GA-invariant; see :func:`bnpo_aggregation`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import torch
from torch import Tensor

__all__ = [
    "POLICY_LOSSES",
    "KL_PENALTIES",
    "LOSS_AGGREGATIONS",
    "CLIP_METRICS",
    "PolicyLossFn",
    "AggregationFn",
    "register_policy_loss",
    "register_kl_penalty",
    "register_loss_aggregation",
    "get_policy_loss",
    "get_kl_penalty",
    "get_loss_aggregation",
    "per_token_policy_loss",
    "mixed_policy_loss",
    "clipped_policy_loss",
    "reinforce_policy_loss",
    "no_ratio_policy_loss",
    "kl_penalty",
    "masked_mean",
    "aggregate_loss",
]

#: Keys of the per-token clip indicator tensors returned by the policy losses (TRL's logged metric names; the
#: caller turns each into a scalar with ``masked_mean(indicator, mask)``). ``clip_ratio/dual_mean`` is ours: the
#: fraction of tokens where the dual-clip bound was the active one (verl's ``pg_clipfrac_lower``).
CLIP_METRICS: tuple[str, ...] = (
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "clip_ratio/dual_mean",
)


def _lookup(registry: Mapping[str, Callable], name: str, what: str) -> Callable:
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; allowed: {sorted(registry)}") from None


def _registrar(registry: dict[str, Callable], what: str):
    def register(name: str):
        def deco(fn):
            if name in registry:
                raise ValueError(f"{what} {name!r} is already registered")
            registry[name] = fn
            return fn

        return deco

    return register


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is true (over all dims, or along ``dim``).

    The denominator is clamped to >= 1 (as TRL does), so an all-masked input gives 0, not NaN. Masked-out
    positions are *selected away* (``torch.where``), not multiplied by 0, so an ``inf``/``nan`` at a padding position
    does not leak into the value.
    """
    m = mask.bool()
    count = m.sum() if dim is None else m.sum(dim)
    return _masked_sum(x, m, dim) / count.clamp(min=1)


def _masked_sum(per_token: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``per_token`` over positions where ``mask`` is true (selected away, as in :func:`masked_mean`)."""
    m = mask.bool()
    x0 = torch.where(m, per_token, torch.zeros_like(per_token))
    return x0.sum() if dim is None else x0.sum(dim)


# ----------------------------------------------------------------------------------------------------------------
# policy losses (per token)
# ----------------------------------------------------------------------------------------------------------------


class PolicyLossFn(Protocol):
    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor | None,
        advantages: Tensor,
        *,
        epsilon_low: float = ...,
        epsilon_high: float | None = ...,
        dual_clip: float | None = ...,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


POLICY_LOSSES: dict[str, PolicyLossFn] = {}
register_policy_loss = _registrar(POLICY_LOSSES, "policy loss")


def get_policy_loss(name: str) -> PolicyLossFn:
    """Policy loss by name; unknown names raise ``ValueError`` listing the allowed ones."""
    return _lookup(POLICY_LOSSES, name, "policy loss")


def _token_advantages(advantages: Tensor, logprobs: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1)`` so it broadcasts over positions; ``(B, T)`` unchanged."""
    if advantages.dim() == 1:
        if advantages.shape[0] != logprobs.shape[0]:
            raise ValueError(
                f"advantages (B,) must match the logprobs batch {logprobs.shape[0]}, got {advantages.shape[0]}"
            )
        return advantages.unsqueeze(-1)
    if advantages.shape != logprobs.shape:
        raise ValueError(f"advantages must be (B,) or (B, T)={tuple(logprobs.shape)}, got {tuple(advantages.shape)}")
    return advantages


def _no_clip_metrics(logprobs: Tensor) -> dict[str, Tensor]:
    return {k: torch.zeros(logprobs.shape, dtype=logprobs.dtype, device=logprobs.device) for k in CLIP_METRICS}


def _require_old(old_logprobs: Tensor | None, logprobs: Tensor, kind: str) -> Tensor:
    if old_logprobs is None:
        raise ValueError(f"policy loss {kind!r} needs old_logprobs")
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(f"old_logprobs shape {tuple(old_logprobs.shape)} != logprobs shape {tuple(logprobs.shape)}")
    return old_logprobs.detach()


@register_policy_loss("clipped")
def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO / GRPO clipped surrogate, per token: ``-min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)``, ``r = exp(lp-old)``.

    Why: the clip removes the incentive to move the ratio beyond the trust region in the direction the advantage
    rewards (PPO, https://arxiv.org/abs/1707.06347). ``epsilon_high > epsilon_low`` is DAPO's *clip-higher*
    (https://arxiv.org/abs/2503.14476): low-probability tokens with A > 0 may grow more, which fights entropy
    collapse.

    ``dual_clip = c`` (> 1; Dual-clip PPO, https://arxiv.org/abs/1912.09729, verl's ``clip_ratio_c``): for A < 0 the
    ordinary surrogate is unbounded as the ratio grows (``-r*A`` with r huge), so one stale, very off-policy token can
    dominate the batch. The loss is capped at ``-c*A``: ``loss = min(loss, -c*A)`` where A < 0; A >= 0 is untouched.
    (Latent-GRPO uses c = 3.)

    Returns ``(loss (B, T), indicators)``; the indicators are float 0/1 tensors (B, T) keyed by :data:`CLIP_METRICS`,
    defined exactly as TRL logs them: low = ``r < 1-eps_low and A < 0``, high = ``r > 1+eps_high and A > 0``,
    region = low or high; dual = the dual-clip cap is the active value.
    """
    old = _require_old(old_logprobs, logprobs, "clipped")
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    adv = _token_advantages(advantages, logprobs)
    ratio = torch.exp(logprobs - old)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + eps_high)
    loss = -torch.min(ratio * adv, clipped_ratio * adv)

    dual_active = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        cap = -dual_clip * adv
        neg = (adv < 0).expand_as(loss)
        dual_active = neg & (loss > cap)
        loss = torch.where(neg, torch.min(loss, cap), loss)

    low = (ratio < 1 - epsilon_low) & (adv < 0)
    high = (ratio > 1 + eps_high) & (adv > 0)
    dtype = loss.dtype
    metrics = {
        "clip_ratio/low_mean": low.to(dtype),
        "clip_ratio/high_mean": high.to(dtype),
        "clip_ratio/region_mean": (low | high).to(dtype),
        "clip_ratio/dual_mean": dual_active.to(dtype),
    }
    return loss, metrics


@register_policy_loss("reinforce")
def reinforce_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """On-policy REINFORCE / GRPO without clipping: ``-exp(lp - old.detach()) * A`` (HRPO's form,
    https://arxiv.org/abs/2505.18454, one update per rollout batch).

    At ``lp == old`` (on-policy) the value is ``-A`` and the gradient is ``-A * d lp``, i.e. the plain policy
    gradient; unlike ``-A * lp`` the value stays well-scaled and it also reweights correctly if a caller does reuse
    a batch. Pass ``old_logprobs = logprobs.detach()`` for the purely on-policy estimator. Clip options are ignored;
    the clip indicators are all zero.
    """
    old = _require_old(old_logprobs, logprobs, "reinforce")
    adv = _token_advantages(advantages, logprobs)
    loss = -torch.exp(logprobs - old) * adv
    return loss, _no_clip_metrics(loss)


@register_policy_loss("no_ratio")
def no_ratio_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``-A * lp`` with no importance ratio and no clipping.

    Used by LEPO's latent positions (https://arxiv.org/abs/2604.17892), where ``lp`` is the negative soft
    cross-entropy ``sum_k z_k log pi(k)`` against the stored Gumbel-softmax weights ``z``: there is no single sampled
    token whose probability a ratio could compare, and for a one-hot ``z`` this reduces to the ordinary token
    REINFORCE term. ``old_logprobs`` is not used (may be None).
    """
    adv = _token_advantages(advantages, logprobs)
    loss = -adv * logprobs
    return loss, _no_clip_metrics(loss)


def per_token_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
    kind: str = "clipped",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token policy loss of one registered ``kind`` (``"clipped"``, ``"reinforce"``, ``"no_ratio"``).

    Args:
        logprobs: ``(B, T)`` current per-position log-probs (or surrogate), with grad.
        old_logprobs: ``(B, T)`` log-probs of the rollout policy (detached here); None only for ``"no_ratio"``.
        advantages: ``(B,)`` per sequence or ``(B, T)`` per position.
        epsilon_low / epsilon_high: clip range ``[1-eps_low, 1+eps_high]``; ``epsilon_high=None`` -> ``epsilon_low``.
        dual_clip: dual-clip constant ``c > 1`` for A < 0, or None.
        kind: registry name.

    Returns:
        ``(loss (B, T), indicators)``; unmasked -- apply the completion mask with :func:`aggregate_loss`, and turn
        the indicators into TRL's ``clip_ratio/*`` metrics with :func:`masked_mean`.
    """
    fn = get_policy_loss(kind)
    return fn(
        logprobs, old_logprobs, advantages, epsilon_low=epsilon_low, epsilon_high=epsilon_high, dual_clip=dual_clip
    )


def mixed_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    kind_masks: Mapping[str, Tensor],
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-position choice of policy-loss kind: ``kind_masks`` maps a kind name to a ``(B, T)`` bool mask of the
    positions that use it (masks must be disjoint).

    Why: LEPO's unified estimator uses the soft cross-entropy ``-A * sum z log pi`` (``"no_ratio"``) at latent
    positions and the clipped surrogate at discrete positions, in the same sequence::

        mixed_policy_loss(lp, old, adv, {"no_ratio": latent_mask, "clipped": ~latent_mask}, epsilon_low=0.2)

    Positions covered by no mask get loss 0 (they should be masked out in aggregation anyway). Each kind only sees
    its own positions: elsewhere its ``old_logprobs`` are replaced by ``logprobs.detach()`` (ratio 1), so a
    meaningless stored value there (e.g. 0 or NaN for latent positions) cannot produce inf/NaN values or gradients.
    Indicators are combined the same way (each kind's indicators on its own positions).
    """
    if not kind_masks:
        raise ValueError("kind_masks must name at least one policy-loss kind")
    masks = {}
    for name, m in kind_masks.items():
        get_policy_loss(name)  # validate the name early
        if m.shape != logprobs.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(m.shape)}, expected {tuple(logprobs.shape)}")
        masks[name] = m.bool()
    covered = torch.zeros_like(logprobs, dtype=torch.int32)
    for m in masks.values():
        covered = covered + m.to(torch.int32)
    if bool((covered > 1).any()):
        raise ValueError("kind_masks overlap: each position must use at most one policy-loss kind")

    loss = torch.zeros_like(logprobs)
    metrics = _no_clip_metrics(logprobs)
    for name, m in masks.items():
        # None stays None: a kind that needs old log-probs raises its own error.
        old_k = None if old_logprobs is None else torch.where(m, old_logprobs.detach(), logprobs.detach())
        loss_k, metrics_k = per_token_policy_loss(
            logprobs,
            old_k,
            advantages,
            epsilon_low=epsilon_low,
            epsilon_high=epsilon_high,
            dual_clip=dual_clip,
            kind=name,
        )
        loss = torch.where(m, loss_k, loss)
        metrics = {k: torch.where(m, metrics_k[k], metrics[k]) for k in CLIP_METRICS}
    return loss, metrics


# ----------------------------------------------------------------------------------------------------------------
# KL penalties (per token) against a reference policy
# ----------------------------------------------------------------------------------------------------------------

KL_PENALTIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
register_kl_penalty = _registrar(KL_PENALTIES, "KL penalty")


def get_kl_penalty(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """KL estimator by name; unknown names raise ``ValueError`` listing the allowed ones."""
    return _lookup(KL_PENALTIES, name, "KL penalty")


@register_kl_penalty("k1")
def _kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``lp - ref``: unbiased for KL(pi || ref) under samples of pi, but high variance and can be negative."""
    return logprobs - ref_logprobs


@register_kl_penalty("k2")
def _kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``0.5 * (lp - ref)^2``: biased, low variance, >= 0 (http://joschu.net/blog/kl-approx.html)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@register_kl_penalty("k3")
def _kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``exp(ref - lp) - (ref - lp) - 1``: unbiased, low variance, always >= 0 (Schulman,
    http://joschu.net/blog/kl-approx.html). This is TRL's GRPO KL term and HRPO's."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


@register_kl_penalty("low_var_kl")
def _kl_low_var(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """verl's ``low_var_kl``: k3 with ``ref - lp`` clamped to [-20, 20] before the exp (no overflow) and the
    result clamped to [-10, 10], so one token the reference finds very unlikely cannot dominate the batch.
    Latent-GRPO's optional KL (coefficient 0.001)."""
    d = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1, -10.0, 10.0)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate between the current policy and the reference (``"k1"``, ``"k2"``, ``"k3"``,
    ``"low_var_kl"``). ``ref_logprobs`` carries no gradient in practice (frozen reference); it is not detached here
    so the function stays a plain formula."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"ref_logprobs shape {tuple(ref_logprobs.shape)} != logprobs shape {tuple(logprobs.shape)}")
    return get_kl_penalty(kind)(logprobs, ref_logprobs)


# ----------------------------------------------------------------------------------------------------------------
# aggregation (TRL's loss_type)
# ----------------------------------------------------------------------------------------------------------------


class AggregationFn(Protocol):
    def __call__(
        self,
        per_token: Tensor,
        mask: Tensor,
        *,
        max_completion_length: int | None = ...,
        num_sequences: int | None = ...,
        num_tokens: float | None = ...,
    ) -> Tensor: ...


LOSS_AGGREGATIONS: dict[str, AggregationFn] = {}
register_loss_aggregation = _registrar(LOSS_AGGREGATIONS, "loss aggregation")


def get_loss_aggregation(name: str) -> AggregationFn:
    """Aggregation by ``loss_type`` name; unknown names raise ``ValueError`` listing the allowed ones."""
    return _lookup(LOSS_AGGREGATIONS, name, "loss_type")


@register_loss_aggregation("grpo")
def grpo_aggregation(
    per_token: Tensor,
    mask: Tensor,
    *,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> Tensor:
    """GRPO (DeepSeekMath): mean over each sequence's active tokens, then mean over sequences.

    Computed as ``sum_i seqmean_i / num_sequences`` (default: this micro-batch's B), so with the global sequence
    count the micro-batch losses sum to the full-batch loss. Known bias: long sequences' tokens weigh less
    (https://arxiv.org/abs/2503.20783).
    """
    seq = masked_mean(per_token, mask, dim=-1)
    n = per_token.shape[0] if num_sequences is None else num_sequences
    return seq.sum() / n


@register_loss_aggregation("bnpo")
def bnpo_aggregation(
    per_token: Tensor,
    mask: Tensor,
    *,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> Tensor:
    """BNPO (TRL): token mean over *this micro-batch*, ``sum(loss*mask) / sum(mask)``.

    Not GA-invariant by definition: its normaliser is the micro-batch's own token count, so k micro-batches give the
    average of k token means, not the token mean of the union. To reproduce TRL's GA behaviour (each micro loss
    divided by the number of accumulation steps) under this module's sum-the-micro-losses convention, the result is
    scaled by ``B / num_sequences`` (default 1). Use ``dapo`` for a GA-invariant token mean.
    """
    loss = masked_mean(per_token, mask)
    if num_sequences is not None:
        loss = loss * (per_token.shape[0] / num_sequences)
    return loss


@register_loss_aggregation("dr_grpo")
def dr_grpo_aggregation(
    per_token: Tensor,
    mask: Tensor,
    *,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> Tensor:
    """Dr. GRPO (https://arxiv.org/abs/2503.20783): ``sum(loss*mask) / (num_sequences * max_completion_length)``.

    A constant normaliser removes GRPO's length bias. ``max_completion_length`` is required (the configured
    generation limit, not the padded width of this micro-batch, which would make the loss depend on padding).
    ``num_sequences`` defaults to this micro-batch's B (TRL); pass the global count for GA invariance.
    """
    if max_completion_length is None:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (the configured generation limit)")
    n = per_token.shape[0] if num_sequences is None else num_sequences
    return _masked_sum(per_token, mask) / (n * max_completion_length)


@register_loss_aggregation("dapo")
def dapo_aggregation(
    per_token: Tensor,
    mask: Tensor,
    *,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> Tensor:
    """DAPO token-level loss (https://arxiv.org/abs/2503.14476): ``sum(loss*mask) / num_tokens`` where
    ``num_tokens`` is the number of active tokens in the **whole accumulated batch** (every token weighs the same,
    however the batch is split). Default: this micro-batch's active-token count (then equal to ``bnpo``). With data
    parallelism and gradient averaging across W ranks, pass ``global_tokens / W``.
    """
    n = mask.bool().sum().clamp(min=1) if num_tokens is None else num_tokens
    return _masked_sum(per_token, mask) / n


def aggregate_loss(
    per_token: Tensor,
    mask: Tensor,
    loss_type: str,
    *,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar with TRL's ``loss_type`` (``grpo``, ``bnpo``, ``dr_grpo``,
    ``dapo``).

    GA convention: call it on each micro-batch with the *global* ``num_sequences`` (sequences in the optimizer step)
    and ``num_tokens`` (active tokens in the optimizer step), backprop each result, and do not divide by the number
    of micro-batches: the summed losses and gradients then equal those of the whole batch for ``grpo``, ``dr_grpo``
    and ``dapo``. Masked-out positions are selected away, so non-finite values there do not leak into the value.
    """
    if per_token.shape != mask.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != per_token shape {tuple(per_token.shape)}")
    fn = get_loss_aggregation(loss_type)
    return fn(
        per_token,
        mask,
        max_completion_length=max_completion_length,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
    )
