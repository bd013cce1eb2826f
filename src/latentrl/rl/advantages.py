"""Outcome-reward advantage estimators for group-sampled RL (GRPO family), as small pure tensor functions.

Layout convention (the same as TRL's ``GRPOTrainer``): a batch holds ``num_prompts * G`` rollouts and the ``G``
rollouts of one prompt (a *group*) are **contiguous rows**, so ``rewards.view(-1, G)`` is one group per row.

Estimators live in a registry (verl's ``core_algos.py`` style) so a method preset names its estimator by string:

    >>> fn = get_advantage_estimator("grpo")
    >>> advantages, metrics = fn(rewards, num_generations=8, scale_rewards="group")

All estimators share the keyword signature of :func:`group_advantages` and return ``(advantages (N,), metrics)``
where ``metrics`` uses TRL's logged names (``reward``, ``reward_std``, ``frac_reward_zero_std``).

Semantics follow TRL (``trl/trainer/grpo_trainer.py::_generate_and_score_completions``):

* ``A_i = r_i - mean(group)``, divided by ``std + eps`` where ``std`` is the *unbiased* (Bessel-corrected) standard
  deviation of the group (``scale_rewards="group"``) or of the whole batch (``"batch"``), or not divided at all
  (``"none"``, Dr. GRPO, https://arxiv.org/abs/2503.20783). ``eps`` defaults to TRL's 1e-4.
* NaN rewards (TRL: every reward function returned ``None``) are left out of the statistics and get ``A = 0``.

Latent-GRPO additions (Deng et al., https://arxiv.org/abs/2604.27998; authors' code
github.com/DJC-GO-SOLO/Latent-GRPO, ``verl/trainer/ppo/core_algos.py``):

* invalid-sample masking (``valid=`` / ``exclude_invalid_from_stats=``),
* optimal correct-path first-token selection (:func:`first_position_advantages`),
* dynamic sampling support (:func:`zero_std_groups`, as in DAPO, https://arxiv.org/abs/2503.14476).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "SCALE_REWARDS",
    "AdvantageEstimator",
    "register_advantage_estimator",
    "get_advantage_estimator",
    "group_advantages",
    "reinforce_advantages",
    "rloo_advantages",
    "zero_std_groups",
    "first_position_advantages",
    "apply_first_position_advantages",
    "first_true_index",
]

SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")


class AdvantageEstimator(Protocol):
    def __call__(
        self,
        rewards: Tensor,
        num_generations: int,
        *,
        scale_rewards: str = ...,
        eps: float = ...,
        valid: Tensor | None = ...,
        exclude_invalid_from_stats: bool = ...,
    ) -> tuple[Tensor, dict[str, float]]: ...


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator adding an estimator to :data:`ADVANTAGE_ESTIMATORS` under ``name``."""

    def deco(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """Look up an estimator by name; unknown names raise ``ValueError`` listing the allowed ones."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; allowed: {sorted(ADVANTAGE_ESTIMATORS)}"
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# group statistics
# ----------------------------------------------------------------------------------------------------------------


def _check_groups(rewards: Tensor, num_generations: int) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if num_generations < 1 or rewards.numel() % num_generations != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) must be a positive multiple of num_generations ({num_generations})"
        )


def _float(rewards: Tensor) -> Tensor:
    return rewards if rewards.is_floating_point() else rewards.float()


def _group_stats(
    rewards: Tensor,
    num_generations: int,
    valid: Tensor | None,
    exclude_invalid_from_stats: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-group mean / unbiased std over the rows that count for the statistics.

    Returns ``(r (P,G), in_stats (P,G) bool, mean (P,), std (P,), count (P,))``. A group with fewer than two
    counted rows gets ``std = 0`` (its advantages are zeroed by the caller: no baseline can be formed).
    """
    r = _float(rewards).reshape(-1, num_generations)
    in_stats = ~torch.isnan(r)
    if valid is not None:
        if valid.shape != rewards.shape:
            raise ValueError(f"valid must have shape {tuple(rewards.shape)}, got {tuple(valid.shape)}")
        if exclude_invalid_from_stats:
            in_stats = in_stats & valid.reshape(-1, num_generations).bool()
    count = in_stats.sum(dim=1)
    r0 = torch.where(in_stats, r, torch.zeros_like(r))
    mean = r0.sum(dim=1) / count.clamp(min=1)
    sq = torch.where(in_stats, (r - mean[:, None]) ** 2, torch.zeros_like(r))
    var = sq.sum(dim=1) / (count - 1).clamp(min=1)  # Bessel's correction, as TRL's nanstd / torch.std
    std = torch.where(count >= 2, var.sqrt(), torch.zeros_like(var))
    return r, in_stats, mean, std, count


@register_advantage_estimator("grpo")
def group_advantages(
    rewards: Tensor,
    num_generations: int,
    scale_rewards: str = "group",
    eps: float = 1e-4,
    valid: Tensor | None = None,
    exclude_invalid_from_stats: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO group-relative advantages (DeepSeekMath, https://arxiv.org/abs/2402.03300) with TRL's semantics.

    ``A_i = (r_i - mean_group) / (std + eps)`` where std is the unbiased std of the group (``"group"``), of the whole
    batch (``"batch"``: reduces the difficulty bias of per-group scaling, https://arxiv.org/abs/2508.08221), or no
    division (``"none"``: Dr. GRPO, https://arxiv.org/abs/2503.20783, removes the question-level difficulty bias).

    Latent-GRPO's *invalid-sample masking*: rows with ``valid == False`` (a rollout that never finished, e.g. hit the
    length limit, has no trustworthy reward) get ``A = 0``. With ``exclude_invalid_from_stats=True`` they are also
    left out of the group mean/std (and of the batch std), so they do not drag the baseline; a group with fewer than
    two valid rows then gets ``A = 0`` for all its rows (no baseline can be formed). Note: the authors' code instead
    uses mean 0 / std 1 for such a group, which gives a lone valid row ``A = r``; we prefer "no signal" over a raw,
    unbaselined reward. NaN rewards are always excluded from the statistics and get ``A = 0`` (TRL).

    Args:
        rewards: ``(N,)`` summed rewards, ``N = num_prompts * num_generations``, groups contiguous.
        num_generations: ``G``, rollouts per prompt.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"`` (TRL's option).
        eps: added to the std before dividing (TRL: 1e-4; verl / Latent-GRPO code: 1e-6).
        valid: optional ``(N,)`` bool, False for invalid (unfinished) rollouts.
        exclude_invalid_from_stats: compute mean/std over valid rows only.

    Returns:
        ``(advantages (N,), metrics)`` with metrics ``reward`` (mean reward of the batch, NaNs ignored),
        ``reward_std`` (mean over groups of the group std; groups with < 2 counted rows count as 0) and
        ``frac_reward_zero_std`` (fraction of groups whose std is ~0, i.e. that carry no learning signal).

        Differences from TRL's logging, on purpose: TRL >= 1.x logs ``reward_std`` as the std of the whole batch,
        and with ``scale_rewards="batch"`` its ``frac_reward_zero_std`` looks at the batch std. Both here are
        group-level, in every mode, because that is what tells whether the groups carry a signal (and what
        dynamic sampling acts on).
    """
    _check_groups(rewards, num_generations)
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; allowed: {list(SCALE_REWARDS)}")
    r, in_stats, mean, std, count = _group_stats(rewards, num_generations, valid, exclude_invalid_from_stats)

    adv = r - mean[:, None]
    if scale_rewards == "group":
        adv = adv / (std[:, None] + eps)
    elif scale_rewards == "batch":
        flat = r[in_stats]
        batch_std = flat.std() if flat.numel() >= 2 else flat.new_zeros(())
        adv = adv / (batch_std + eps)

    keep = ~torch.isnan(r) & (count >= 2)[:, None]
    if valid is not None:
        keep = keep & valid.reshape(r.shape).bool()
    adv = torch.where(keep, adv, torch.zeros_like(adv)).reshape(-1)

    zero_std = torch.isclose(std, torch.zeros_like(std)) | (count < 2)
    finite = _float(rewards)[~torch.isnan(_float(rewards))]
    metrics = {
        "reward": finite.mean().item() if finite.numel() else float("nan"),
        "reward_std": std.mean().item(),
        "frac_reward_zero_std": zero_std.float().mean().item(),
    }
    return adv, metrics


def _unscaled_group_advantages(
    estimator: str,
    rewards: Tensor,
    num_generations: int,
    scale_rewards: str,
    eps: float,
    valid: Tensor | None,
    exclude_invalid_from_stats: bool,
) -> tuple[Tensor, dict[str, float]]:
    """:func:`group_advantages` with ``scale_rewards="none"``, for the estimators that never scale (any other
    ``scale_rewards`` is almost surely a configuration mistake, so it raises, naming ``estimator``)."""
    if scale_rewards != "none":
        raise ValueError(f"the {estimator!r} estimator does not scale rewards; got scale_rewards={scale_rewards!r}")
    return group_advantages(
        rewards,
        num_generations,
        scale_rewards="none",
        eps=eps,
        valid=valid,
        exclude_invalid_from_stats=exclude_invalid_from_stats,
    )


@register_advantage_estimator("reinforce")
def reinforce_advantages(
    rewards: Tensor,
    num_generations: int,
    scale_rewards: str = "none",
    eps: float = 1e-4,
    valid: Tensor | None = None,
    exclude_invalid_from_stats: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE with the group mean as baseline: ``A_i = r_i - mean_group`` (no std scaling).

    This is GRPO with ``scale_rewards="none"`` (Dr. GRPO's unbiased form). Only ``"none"`` is accepted for
    ``scale_rewards``; a different value is almost surely a configuration mistake, so it raises.
    """
    return _unscaled_group_advantages(
        "reinforce", rewards, num_generations, scale_rewards, eps, valid, exclude_invalid_from_stats
    )


@register_advantage_estimator("rloo")
def rloo_advantages(
    rewards: Tensor,
    num_generations: int,
    scale_rewards: str = "none",
    eps: float = 1e-4,
    valid: Tensor | None = None,
    exclude_invalid_from_stats: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """RLOO: leave-one-out baseline ``A_i = r_i - mean_{j != i} r_j = n/(n-1) * (r_i - mean)`` (Ahmadian et al.,
    https://arxiv.org/abs/2402.14740), where ``n`` is the number of rows counted in the group's statistics.

    Unbiased (the baseline does not depend on the sample it scores); no std scaling, so ``scale_rewards`` must be
    ``"none"``.
    """
    adv, metrics = _unscaled_group_advantages(
        "rloo", rewards, num_generations, scale_rewards, eps, valid, exclude_invalid_from_stats
    )
    _, _, _, _, count = _group_stats(rewards, num_generations, valid, exclude_invalid_from_stats)
    factor = count.to(adv.dtype) / (count - 1).clamp(min=1).to(adv.dtype)
    adv = (adv.reshape(-1, num_generations) * factor[:, None]).reshape(-1)
    return adv, metrics


# ----------------------------------------------------------------------------------------------------------------
# dynamic sampling
# ----------------------------------------------------------------------------------------------------------------


def zero_std_groups(rewards: Tensor, num_generations: int) -> Tensor:
    """``(num_groups,)`` bool: True where all rewards of the group are equal (to float tolerance).

    Such a group has ``A = 0`` for every row and contributes no policy gradient (only KL), yet costs a full forward
    and backward. DAPO's *dynamic sampling* (https://arxiv.org/abs/2503.14476) drops these groups and refills the
    batch; Latent-GRPO uses the same filter. NaN rewards are ignored; a group with no finite reward counts as
    zero-std.
    """
    _check_groups(rewards, num_generations)
    r = _float(rewards).reshape(-1, num_generations)
    finite = ~torch.isnan(r)
    hi = torch.where(finite, r, torch.full_like(r, float("-inf"))).amax(dim=1)
    lo = torch.where(finite, r, torch.full_like(r, float("inf"))).amin(dim=1)
    return ~finite.any(dim=1) | torch.isclose(hi, lo)


# ----------------------------------------------------------------------------------------------------------------
# Latent-GRPO: optimal correct-path first-token selection
# ----------------------------------------------------------------------------------------------------------------


def first_position_advantages(
    advantages: Tensor,
    seq_mean_old_logprob: Tensor,
    num_generations: int,
    *,
    zero_non_positive: bool = True,
) -> Tensor:
    """Advantage to apply at the **first latent position** of each rollout (Latent-GRPO's "optimal correct-path
    first-token selection").

    Why: a latent step's input is a weighted mixture of embeddings. Reinforcing several *different* correct first
    latents in one group pulls the first-step distribution toward their average, which is generally not itself a
    valid latent ("latent mixture non-closure"). So within a group only **one** positive-advantage rollout -- the one
    the old policy found most likely, by length-normalised mean old log-prob (mean, not sum, so that short chains
    are not favoured) -- keeps its advantage at the first latent position.

    Rule, per group (groups are contiguous blocks of ``num_generations`` rows):

    * no row has ``A > 0``: nothing changes;
    * otherwise the winner is the ``A > 0`` row with the highest ``seq_mean_old_logprob`` (ties: lowest row index;
      NaN log-probs never win unless all candidates are NaN / -inf, then the first candidate wins). The winner keeps
      its advantage; every other positive row gets 0;
    * rows with ``A <= 0``: with ``zero_non_positive=True`` (default) they also get 0 at the first position.
      This is what the authors' code does (``compute_latent_grpo_outcome_advantage_firstmask_best_*`` in
      DJC-GO-SOLO/Latent-GRPO ``core_algos.py`` zeroes the first-position advantage of *every* non-winner of a group
      that has a positive candidate, negatives included), so only one first latent is moved at all. With
      ``zero_non_positive=False`` rows with ``A <= 0`` keep theirs (the reading "only the positive rows are
      filtered"; negative rows push away from their first latents, which does not average correct paths).

    Args:
        advantages: ``(N,)`` sequence advantages (after any invalid-sample masking).
        seq_mean_old_logprob: ``(N,)`` mean old log-prob over each rollout's active positions.
        num_generations: group size ``G``.

    Returns:
        ``(N,)`` advantages for the first latent position; write them into a per-token tensor with
        :func:`apply_first_position_advantages`.
    """
    _check_groups(advantages, num_generations)
    if seq_mean_old_logprob.shape != advantages.shape:
        raise ValueError(
            f"seq_mean_old_logprob must have shape {tuple(advantages.shape)}, got {tuple(seq_mean_old_logprob.shape)}"
        )
    adv = advantages.reshape(-1, num_generations)
    cand = adv > 0
    has_pos = cand.any(dim=1)
    lp = seq_mean_old_logprob.reshape(adv.shape).to(torch.float64)
    lp = torch.nan_to_num(lp, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    key = torch.where(cand, lp, torch.full_like(lp, float("-inf")))
    best = key.argmax(dim=1)  # first maximal index on ties
    first_cand = cand.to(torch.int8).argmax(dim=1)
    best = torch.where(torch.isneginf(key.amax(dim=1)), first_cand, best)
    winner = torch.zeros_like(cand)
    winner[torch.arange(adv.shape[0], device=adv.device), best] = True
    winner &= has_pos[:, None]

    zero = has_pos[:, None] & ~winner
    if not zero_non_positive:
        zero &= cand
    return torch.where(zero, torch.zeros_like(adv), adv).reshape(-1)


def apply_first_position_advantages(
    token_advantages: Tensor,
    first_pos_adv: Tensor,
    first_latent_index: Tensor,
) -> Tensor:
    """Return a copy of ``token_advantages (N, T)`` with ``out[i, first_latent_index[i]] = first_pos_adv[i]``.

    Rows with ``first_latent_index < 0`` (no latent position) are left unchanged. Pure: the input is not modified.
    """
    if token_advantages.dim() != 2:
        raise ValueError(f"token_advantages must be (N, T), got shape {tuple(token_advantages.shape)}")
    n, t = token_advantages.shape
    if first_pos_adv.shape != (n,) or first_latent_index.shape != (n,):
        raise ValueError("first_pos_adv and first_latent_index must both have shape (N,)")
    idx = first_latent_index.long()
    if bool((idx >= t).any()):
        raise ValueError(f"first_latent_index out of range for T={t}")
    has = idx >= 0
    rows = torch.arange(n, device=token_advantages.device)[has]
    out = token_advantages.clone()
    out[rows, idx[has]] = first_pos_adv[has].to(out.dtype)
    return out


def first_true_index(mask: Tensor) -> Tensor:
    """``(N,)`` index of the first True along the last dim of an ``(N, T)`` mask, ``-1`` for rows with none.

    Typical use: ``first_true_index(latent_mask & completion_mask)`` gives ``first_latent_index``.
    """
    m = mask.bool()
    idx = m.to(torch.int8).argmax(dim=-1)
    return torch.where(m.any(dim=-1), idx, torch.full_like(idx, -1))
