"""Advantage estimators on hand-made groups; expected values are worked out by hand in plain Python."""

from __future__ import annotations

import math

import pytest
import torch

from latentrl.rl.advantages import (
    ADVANTAGE_ESTIMATORS,
    apply_first_position_advantages,
    first_position_advantages,
    first_true_index,
    get_advantage_estimator,
    group_advantages,
    zero_std_groups,
)

EPS = 1e-4
# Two groups of G=4 (contiguous rows).
#   group A = [1, 0, 0, 1]: mean 0.5, squared deviations 4 * 0.25 = 1, unbiased var 1/3
#   group B = [2, 0, 1, 1]: mean 1.0, squared deviations 1 + 1 + 0 + 0 = 2, unbiased var 2/3
#   batch: mean 6/8 = 0.75, squared deviations .0625*4 + .5625*3 + 1.5625 = 3.5, unbiased var 3.5/7 = 0.5
REWARDS = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0]
MEAN_A, MEAN_B = 0.5, 1.0
STD_A, STD_B = math.sqrt(1 / 3), math.sqrt(2 / 3)
STD_BATCH = math.sqrt(0.5)


def _r(values=REWARDS, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def _close(actual: torch.Tensor, expected: list[float], tol: float = 1e-9):
    assert actual.shape == (len(expected),)
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=0, atol=tol)


def test_group_scale():
    adv, m = group_advantages(_r(), 4, scale_rewards="group")
    exp = [(r - MEAN_A) / (STD_A + EPS) for r in REWARDS[:4]] + [(r - MEAN_B) / (STD_B + EPS) for r in REWARDS[4:]]
    _close(adv, exp)
    assert m["reward"] == pytest.approx(0.75)
    assert m["reward_std"] == pytest.approx((STD_A + STD_B) / 2)
    assert m["frac_reward_zero_std"] == 0.0


def test_batch_scale_uses_group_mean_and_batch_std():
    adv, _ = group_advantages(_r(), 4, scale_rewards="batch")
    exp = [(r - MEAN_A) / (STD_BATCH + EPS) for r in REWARDS[:4]]
    exp += [(r - MEAN_B) / (STD_BATCH + EPS) for r in REWARDS[4:]]
    _close(adv, exp)


def test_no_scale():
    adv, _ = group_advantages(_r(), 4, scale_rewards="none")
    _close(adv, [0.5, -0.5, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0])


def test_custom_eps_and_unknown_scale():
    adv, _ = group_advantages(_r(), 4, scale_rewards="group", eps=0.5)
    assert adv[0].item() == pytest.approx(0.5 / (STD_A + 0.5))
    with pytest.raises(ValueError, match="group"):
        group_advantages(_r(), 4, scale_rewards="std")
    with pytest.raises(ValueError):
        group_advantages(_r(), 3)  # 8 rewards are not a multiple of 3


def test_zero_std_group_gets_zero_advantage_and_is_counted():
    adv, m = group_advantages(_r([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), 3)
    # group 1 all equal -> A = 0/(0+eps) = 0; group 2 [0,1,0]: mean 1/3, var ((1/9)*2 + 4/9)/2 = 1/3
    s = math.sqrt(1 / 3)
    _close(adv, [0.0, 0.0, 0.0, (-1 / 3) / (s + EPS), (2 / 3) / (s + EPS), (-1 / 3) / (s + EPS)])
    assert m["frac_reward_zero_std"] == 0.5
    assert m["reward_std"] == pytest.approx(s / 2)


def test_single_generation_gives_zero():
    adv, m = group_advantages(_r([1.0, 0.0, 3.0]), 1)
    _close(adv, [0.0, 0.0, 0.0])
    assert m["frac_reward_zero_std"] == 1.0


def test_integer_rewards_accepted():
    adv, _ = group_advantages(torch.tensor([1, 0, 0, 1]), 4, scale_rewards="none")
    _close(adv, [0.5, -0.5, -0.5, 0.5])


def test_zero_std_groups():
    r = _r([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.3, 0.1 + 0.2, 0.3, 2.0, 2.0, float("nan")])
    assert zero_std_groups(r, 3).tolist() == [True, False, True, True]


# ---------------------------------------------------------------- invalid-sample masking (Latent-GRPO)

VALID = [True, True, False, True, True, False, False, False]


def test_invalid_rows_zeroed_but_kept_in_stats():
    adv, m = group_advantages(_r(), 4, valid=torch.tensor(VALID), exclude_invalid_from_stats=False)
    full = [(r - MEAN_A) / (STD_A + EPS) for r in REWARDS[:4]] + [(r - MEAN_B) / (STD_B + EPS) for r in REWARDS[4:]]
    _close(adv, [a if v else 0.0 for a, v in zip(full, VALID)])
    assert m["reward_std"] == pytest.approx((STD_A + STD_B) / 2)


def test_invalid_rows_excluded_from_stats():
    adv, m = group_advantages(_r(), 4, valid=torch.tensor(VALID), exclude_invalid_from_stats=True)
    # group A valid rewards [1, 0, 1]: mean 2/3, squared deviations 1/9 + 4/9 + 1/9 = 2/3, unbiased var 1/3
    mean_a, std_a = 2 / 3, math.sqrt(1 / 3)
    exp_a = [(1 - mean_a) / (std_a + EPS), (0 - mean_a) / (std_a + EPS), 0.0, (1 - mean_a) / (std_a + EPS)]
    # group B has a single valid row -> no baseline -> the whole group gets A = 0
    _close(adv, exp_a + [0.0, 0.0, 0.0, 0.0])
    assert m["reward"] == pytest.approx(0.75)  # logged over every rollout
    assert m["reward_std"] == pytest.approx(std_a / 2)
    assert m["frac_reward_zero_std"] == 0.5


def test_invalid_excluded_batch_scale():
    valid = torch.tensor(VALID)
    adv, _ = group_advantages(_r(), 4, scale_rewards="batch", valid=valid, exclude_invalid_from_stats=True)
    # batch std over the counted rows [1, 0, 1 | 2]: mean 1, squared deviations 0 + 1 + 0 + 1, var 2/3
    sb = math.sqrt(2 / 3)
    m = 2 / 3
    _close(adv, [(1 - m) / (sb + EPS), (0 - m) / (sb + EPS), 0.0, (1 - m) / (sb + EPS), 0.0, 0.0, 0.0, 0.0])


def test_nan_rewards_excluded_like_trl():
    adv, m = group_advantages(_r([1.0, float("nan"), 0.0, 1.0]), 4)
    mean, std = 2 / 3, math.sqrt(1 / 3)
    _close(adv, [(1 - mean) / (std + EPS), 0.0, (0 - mean) / (std + EPS), (1 - mean) / (std + EPS)])
    assert m["reward"] == pytest.approx(2 / 3)


def test_valid_shape_checked():
    with pytest.raises(ValueError, match="valid"):
        group_advantages(_r(), 4, valid=torch.ones(4, dtype=torch.bool))


# ---------------------------------------------------------------- registry


def test_registry():
    assert {"grpo", "reinforce", "rloo"} <= set(ADVANTAGE_ESTIMATORS)
    assert get_advantage_estimator("grpo") is group_advantages
    with pytest.raises(ValueError, match="grpo"):
        get_advantage_estimator("ppo-gae")


def test_reinforce_is_unscaled():
    adv, _ = get_advantage_estimator("reinforce")(_r(), 4)
    _close(adv, [0.5, -0.5, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        get_advantage_estimator("reinforce")(_r(), 4, scale_rewards="group")


def test_rloo_leave_one_out_baseline():
    adv, _ = get_advantage_estimator("rloo")(_r(), 4)
    # row 0 of group A: 1 - mean(0, 0, 1) = 2/3; row 1: 0 - mean(1, 0, 1) = -2/3
    # row 4 of group B: 2 - mean(0, 1, 1) = 4/3; row 5: 0 - mean(2, 1, 1) = -4/3; rows 6, 7: 1 - mean(2, 0, 1) = 0
    _close(adv, [2 / 3, -2 / 3, -2 / 3, 2 / 3, 4 / 3, -4 / 3, 0.0, 0.0])


# ---------------------------------------------------------------- first-position selection (Latent-GRPO)


def test_first_position_several_positives_authors_rule():
    adv = _r([0.5, 0.8, -0.3, -1.0, 0.0, 0.2, 0.7, -0.9])
    lp = _r([-1.0, -2.0, -0.1, -0.5, -0.1, -0.3, -0.4, -0.01])
    out = first_position_advantages(adv, lp, 4)
    # group 1: positives rows 0 (-1.0) and 1 (-2.0) -> row 0 wins although row 2 (negative) has the best log-prob;
    # every non-winner gets 0 (authors' code). group 2: positives rows 5 (-0.3) and 6 (-0.4) -> row 5 wins.
    _close(out, [0.5, 0.0, 0.0, 0.0, 0.0, 0.2, 0.0, 0.0])


def test_first_position_keep_non_positive():
    adv = _r([0.5, 0.8, -0.3, -1.0])
    lp = _r([-1.0, -2.0, -0.1, -0.5])
    out = first_position_advantages(adv, lp, 4, zero_non_positive=False)
    _close(out, [0.5, 0.0, -0.3, -1.0])


def test_first_position_ties_pick_lowest_index():
    adv = _r([1.0, 1.0, 1.0, -1.0])
    lp = _r([-0.5, -0.2, -0.2, -0.1])
    _close(first_position_advantages(adv, lp, 4), [0.0, 1.0, 0.0, 0.0])


def test_first_position_no_positive_rows_unchanged():
    adv = _r([0.0, -1.0, 0.0, -2.0, -0.5, -0.5, 0.0, 0.0])
    lp = _r([-1.0, -2.0, -3.0, -4.0, -1.0, -2.0, -3.0, -4.0])
    for keep in (True, False):
        _close(first_position_advantages(adv, lp, 4, zero_non_positive=keep), adv.tolist())


def test_first_position_single_positive_and_nan_logprob():
    adv = _r([1.0, 2.0, -1.0, 3.0, 4.0, -1.0])
    lp = _r([float("nan"), -3.0, -0.1, float("-inf"), float("-inf"), 0.0])
    # group 1: NaN never wins -> row 1; group 2: both candidates -inf -> first candidate (row 3)
    _close(first_position_advantages(adv, lp, 3), [0.0, 2.0, 0.0, 3.0, 0.0, 0.0])


def test_apply_first_position_advantages_is_pure():
    tok = torch.tensor([[0.5] * 4, [0.8] * 4, [-0.3] * 4], dtype=torch.float64)
    out = apply_first_position_advantages(tok, _r([0.5, 0.0, 0.0]), torch.tensor([1, 0, -1]))
    assert out.tolist() == [[0.5, 0.5, 0.5, 0.5], [0.0, 0.8, 0.8, 0.8], [-0.3, -0.3, -0.3, -0.3]]
    assert tok.tolist() == [[0.5] * 4, [0.8] * 4, [-0.3] * 4]
    with pytest.raises(ValueError):
        apply_first_position_advantages(tok, _r([0.0, 0.0, 0.0]), torch.tensor([4, 0, 0]))


def test_first_true_index():
    m = torch.tensor([[0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    assert first_true_index(m).tolist() == [1, -1, 0]


# ---------------------------------------------------------------- TRL reference


def test_matches_trl_nanstd_formula():
    pytest.importorskip("trl")
    utils = pytest.importorskip("trl.trainer.utils")
    nanstd = getattr(utils, "nanstd", None)
    if nanstd is None:
        pytest.skip("trl.trainer.utils.nanstd not available in this TRL version")
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (24,), generator=g).float()
    rewards[5] = float("nan")
    G = 6
    # TRL's _generate_and_score_completions, written out
    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
    std_group = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
    std_batch = nanstd(rewards).expand_as(rewards)
    for mode, std in (("group", std_group), ("batch", std_batch), ("none", None)):
        trl_adv = rewards - mean if std is None else (rewards - mean) / (std + 1e-4)
        trl_adv = torch.nan_to_num(trl_adv, nan=0.0)
        ours, metrics = group_advantages(rewards, G, scale_rewards=mode)
        torch.testing.assert_close(ours, trl_adv)
    is_std_zero = torch.isclose(std_group, torch.zeros_like(std_group))
    assert metrics["frac_reward_zero_std"] == pytest.approx(is_std_zero.float().mean().item())
