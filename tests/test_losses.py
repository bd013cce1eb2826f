"""Policy losses, KL estimators and aggregations on hand-made tensors; expected values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from latentrl.rl.losses import (
    CLIP_METRICS,
    KL_PENALTIES,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    aggregate_loss,
    get_loss_aggregation,
    get_policy_loss,
    kl_penalty,
    masked_mean,
    mixed_policy_loss,
    per_token_policy_loss,
)

D = torch.float64


def _ratios(ratios: list[float], advs: list[float]):
    """One row per case: old = 0, lp = log(ratio) as a leaf with grad."""
    lp = torch.tensor([[math.log(r)] for r in ratios], dtype=D, requires_grad=True)
    old = torch.zeros_like(lp)
    return lp, old, torch.tensor(advs, dtype=D)


def _col(t: torch.Tensor) -> list[float]:
    return t.detach().reshape(-1).tolist()


# ---------------------------------------------------------------- clipped surrogate


def test_clipped_inside_and_outside_range():
    # (ratio, A): inside A>0; above 1+eps A>0 (clipped); below 1-eps A>0 (not clipped: min keeps the smaller r*A);
    #             below 1-eps A<0 (clipped); above 1+eps A<0 (not clipped); inside A<0
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5, 0.9]
    advs = [2.0, 2.0, 2.0, -2.0, -2.0, -2.0]
    lp, old, a = _ratios(ratios, advs)
    loss, ind = per_token_policy_loss(lp, old, a, epsilon_low=0.2)
    expected = [-1.1 * 2, -1.2 * 2, -0.5 * 2, 0.8 * 2, 1.5 * 2, 0.9 * 2]
    assert _col(loss) == pytest.approx(expected)
    assert _col(ind["clip_ratio/high_mean"]) == [0, 1, 0, 0, 0, 0]
    assert _col(ind["clip_ratio/low_mean"]) == [0, 0, 0, 1, 0, 0]
    assert _col(ind["clip_ratio/region_mean"]) == [0, 1, 0, 1, 0, 0]
    assert _col(ind["clip_ratio/dual_mean"]) == [0] * 6
    # d loss / d lp = -A * ratio where unclipped, 0 where clipped
    loss.sum().backward()
    assert _col(lp.grad) == pytest.approx([-2 * 1.1, 0.0, -2 * 0.5, 0.0, 2 * 1.5, 2 * 0.9])


def test_clip_higher_is_asymmetric():
    ratios = [1.25, 1.3, 0.75, 0.85]
    advs = [1.0, 1.0, -1.0, -1.0]
    lp, old, a = _ratios(ratios, advs)
    loss, ind = per_token_policy_loss(lp, old, a, epsilon_low=0.2, epsilon_high=0.28)
    # upper bound 1.28: 1.25 passes (would be clipped at 1.2), 1.3 -> 1.28; lower bound stays 0.8
    assert _col(loss) == pytest.approx([-1.25, -1.28, 0.8, 0.85])
    assert _col(ind["clip_ratio/high_mean"]) == [0, 1, 0, 0]
    assert _col(ind["clip_ratio/low_mean"]) == [0, 0, 1, 0]
    # symmetric default: epsilon_high=None -> epsilon_low
    loss_sym, _ = per_token_policy_loss(lp, old, a, epsilon_low=0.2)
    assert _col(loss_sym) == pytest.approx([-1.2, -1.2, 0.8, 0.85])


def test_dual_clip_only_for_negative_advantage():
    ratios = [10.0, 10.0, 2.0, 0.5]
    advs = [-1.5, 1.5, -1.5, -1.5]
    lp, old, a = _ratios(ratios, advs)
    loss, ind = per_token_policy_loss(lp, old, a, epsilon_low=0.2, dual_clip=3.0)
    # A<0, r=10: ordinary loss 10*1.5=15, capped at 3*1.5=4.5. A>0, r=10: -1.2*1.5 (ordinary clip), no cap.
    # A<0, r=2: 2*1.5=3 < 4.5, no cap. A<0, r=0.5: 0.8*1.5 (low clip).
    assert _col(loss) == pytest.approx([4.5, -1.8, 3.0, 1.2])
    assert _col(ind["clip_ratio/dual_mean"]) == [1, 0, 0, 0]
    loss.sum().backward()
    assert _col(lp.grad) == pytest.approx([0.0, 0.0, 1.5 * 2.0, 0.0])
    without, _ = per_token_policy_loss(lp, old, a, epsilon_low=0.2)
    assert _col(without)[0] == pytest.approx(15.0)
    with pytest.raises(ValueError, match="dual_clip"):
        per_token_policy_loss(lp, old, a, dual_clip=1.0)


def test_per_token_advantages_broadcast():
    lp = torch.log(torch.tensor([[1.1, 1.5], [1.0, 0.5]], dtype=D))
    old = torch.zeros_like(lp)
    seq, _ = per_token_policy_loss(lp, old, torch.tensor([1.0, -1.0], dtype=D))
    tok, _ = per_token_policy_loss(lp, old, torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=D))
    torch.testing.assert_close(seq, tok)
    assert _col(seq) == pytest.approx([-1.1, -1.2, 1.0, 0.8])
    with pytest.raises(ValueError):
        per_token_policy_loss(lp, old, torch.ones(3, dtype=D))


# ---------------------------------------------------------------- reinforce / no_ratio


def test_reinforce_gradient_is_minus_advantage_on_policy():
    lp = torch.tensor([[-0.3, -1.2, -2.0], [-0.7, -0.1, -4.0]], dtype=D, requires_grad=True)
    adv = torch.tensor([0.5, -1.5], dtype=D)
    loss, ind = per_token_policy_loss(lp, lp.detach(), adv, kind="reinforce", epsilon_low=0.01)
    assert _col(loss) == pytest.approx([-0.5] * 3 + [1.5] * 3)  # value -A at lp == old
    loss.sum().backward()
    assert _col(lp.grad) == pytest.approx([-0.5] * 3 + [1.5] * 3)
    assert all(float(ind[k].abs().sum()) == 0.0 for k in CLIP_METRICS)  # never clipped, even at tiny epsilon


def test_reinforce_off_policy_reweights_without_clip():
    lp, old, a = _ratios([3.0], [1.0])
    loss, _ = per_token_policy_loss(lp, old, a, kind="reinforce")
    assert _col(loss) == pytest.approx([-3.0])


def test_no_ratio_is_minus_a_times_logprob():
    lp = torch.tensor([[-0.5, -2.0]], dtype=D, requires_grad=True)
    loss, _ = per_token_policy_loss(lp, None, torch.tensor([2.0], dtype=D), kind="no_ratio")
    assert _col(loss) == pytest.approx([1.0, 4.0])
    loss.sum().backward()
    assert _col(lp.grad) == pytest.approx([-2.0, -2.0])
    with pytest.raises(ValueError, match="old_logprobs"):
        per_token_policy_loss(lp, None, torch.tensor([2.0], dtype=D), kind="clipped")


def test_policy_registry():
    assert {"clipped", "reinforce", "no_ratio"} <= set(POLICY_LOSSES)
    with pytest.raises(ValueError, match="clipped"):
        get_policy_loss("ppo2")
    with pytest.raises(ValueError, match="no_ratio"):
        per_token_policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), kind="gspo")


# ---------------------------------------------------------------- mixed kinds (LEPO)


def test_mixed_policy_loss_selects_per_position():
    # row 0: two latent positions (no_ratio, lp = soft CE surrogate) then two tokens (clipped)
    lp = torch.tensor([[-1.0, -2.0, math.log(1.5), math.log(1.1)]], dtype=D, requires_grad=True)
    old = torch.tensor([[float("nan"), float("nan"), 0.0, 0.0]], dtype=D)  # stored value meaningless at latents
    latent = torch.tensor([[True, True, False, False]])
    adv = torch.tensor([2.0], dtype=D)
    loss, ind = mixed_policy_loss(lp, old, adv, {"no_ratio": latent, "clipped": ~latent}, epsilon_low=0.2)
    assert _col(loss) == pytest.approx([2.0, 4.0, -1.2 * 2, -1.1 * 2])
    assert _col(ind["clip_ratio/high_mean"]) == [0, 0, 1, 0]
    loss.sum().backward()
    assert _col(lp.grad) == pytest.approx([-2.0, -2.0, 0.0, -2.0 * 1.1])
    assert torch.isfinite(lp.grad).all()


def test_mixed_policy_loss_uncovered_positions_and_errors():
    lp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=D)
    m = torch.tensor([[True, False, False]])
    loss, _ = mixed_policy_loss(lp, None, torch.tensor([1.0], dtype=D), {"no_ratio": m})
    assert _col(loss) == pytest.approx([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="overlap"):
        mixed_policy_loss(lp, lp, torch.tensor([1.0], dtype=D), {"no_ratio": m, "clipped": torch.ones_like(m)})
    with pytest.raises(ValueError, match="allowed"):
        mixed_policy_loss(lp, lp, torch.tensor([1.0], dtype=D), {"latent": m})


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_by_hand():
    lp = torch.tensor([-1.0, -2.0, -0.5], dtype=D)
    ref = torch.tensor([-2.0, -1.0, -0.5], dtype=D)
    # k3 with d = ref - lp: d=-1 -> e^-1 + 1 - 1 = e^-1; d=1 -> e - 2; d=0 -> 0
    assert _col(kl_penalty(lp, ref)) == pytest.approx([math.exp(-1), math.e - 2, 0.0])
    assert _col(kl_penalty(lp, ref, "k1")) == pytest.approx([1.0, -1.0, 0.0])
    assert _col(kl_penalty(lp, ref, "k2")) == pytest.approx([0.5, 0.5, 0.0])
    assert _col(kl_penalty(lp, ref, "low_var_kl")) == pytest.approx([math.exp(-1), math.e - 2, 0.0])


def test_k3_nonnegative_and_low_var_clamped():
    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(1000, generator=g, dtype=D) * 3, torch.randn(1000, generator=g, dtype=D) * 3
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    big = kl_penalty(torch.tensor([-40.0], dtype=D), torch.tensor([0.0], dtype=D), "low_var_kl")
    assert _col(big) == [10.0]
    assert torch.isfinite(big).all()
    assert set(KL_PENALTIES) == {"k1", "k2", "k3", "low_var_kl"}
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(lp, ref, "k4")


# ---------------------------------------------------------------- aggregation

PT = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=D)
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)


def test_aggregations_by_hand():
    # active values: row 0 -> 1, 2; row 1 -> 5, 6, 7; total 21 over 5 tokens
    assert aggregate_loss(PT, MASK, "grpo").item() == pytest.approx((1.5 + 6.0) / 2)
    assert aggregate_loss(PT, MASK, "bnpo").item() == pytest.approx(21 / 5)
    assert aggregate_loss(PT, MASK, "dr_grpo", max_completion_length=4).item() == pytest.approx(21 / (2 * 4))
    assert aggregate_loss(PT, MASK, "dr_grpo", max_completion_length=8).item() == pytest.approx(21 / (2 * 8))
    assert aggregate_loss(PT, MASK, "dapo").item() == pytest.approx(21 / 5)
    assert aggregate_loss(PT, MASK, "dapo", num_tokens=10).item() == pytest.approx(21 / 10)
    assert aggregate_loss(PT, MASK, "grpo", num_sequences=4).item() == pytest.approx((1.5 + 6.0) / 4)


def test_aggregation_errors_and_registry():
    assert set(LOSS_AGGREGATIONS) == {"grpo", "bnpo", "dr_grpo", "dapo"}
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(PT, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="dapo"):
        get_loss_aggregation("seq-mean-token-sum")
    with pytest.raises(ValueError, match="shape"):
        aggregate_loss(PT, MASK[:, :3], "grpo")


def test_masked_positions_do_not_leak():
    pt = PT.clone()
    pt[0, 3] = float("nan")
    pt[1, 3] = float("inf")
    assert aggregate_loss(pt, MASK, "bnpo").item() == pytest.approx(21 / 5)
    assert masked_mean(pt, MASK).item() == pytest.approx(21 / 5)
    assert _col(masked_mean(pt, MASK, dim=-1)) == pytest.approx([1.5, 6.0])
    assert masked_mean(pt, torch.zeros_like(MASK)).item() == 0.0


# ---------------------------------------------------------------- gradient accumulation invariance


def _batch(seed: int = 0, B: int = 6, T: int = 7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 2, 5, 1, 6, 3])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=D) * 3
    lp = (old + 0.3 * torch.randn(B, T, generator=g, dtype=D)).requires_grad_(True)
    ref = old + 0.2 * torch.randn(B, T, generator=g, dtype=D)
    adv = torch.randn(B, generator=g, dtype=D)
    return lp, old, ref, adv, mask


def _micro_loss(lp, old, ref, adv, mask, loss_type, **norm):
    width = int(mask.sum(-1).max())  # each micro-batch padded only to its own longest completion
    lp, old, ref, mask = lp[:, :width], old[:, :width], ref[:, :width], mask[:, :width]
    pt, _ = per_token_policy_loss(lp, old, adv, epsilon_low=0.2, epsilon_high=0.28, dual_clip=3.0)
    pt = pt + 0.04 * kl_penalty(lp, ref, "k3")
    return aggregate_loss(pt, mask, loss_type, **norm)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("splits", [[3, 3], [1, 2, 3]])
def test_gradient_accumulation_invariance(loss_type, splits):
    lp, old, ref, adv, mask = _batch()
    norm = dict(max_completion_length=7, num_sequences=6, num_tokens=float(mask.sum()))

    full = _micro_loss(lp, old, ref, adv, mask, loss_type, **norm)
    (g_full,) = torch.autograd.grad(full, lp)

    total, start = torch.zeros((), dtype=D), 0
    grad = torch.zeros_like(lp)
    for n in splits:
        sl = slice(start, start + n)
        micro = _micro_loss(lp[sl], old[sl], ref[sl], adv[sl], mask[sl], loss_type, **norm)
        (g,) = torch.autograd.grad(micro, lp)
        total, grad, start = total + micro.detach(), grad + g, start + n
    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(grad, g_full)
    assert g_full.abs().sum() > 0


def test_bnpo_is_not_ga_invariant_by_definition():
    lp, old, ref, adv, mask = _batch()
    full = _micro_loss(lp, old, ref, adv, mask, "bnpo").item()
    halves_sl = (slice(0, 3), slice(3, 6))
    micro = [_micro_loss(lp[s], old[s], ref[s], adv[s], mask[s], "bnpo", num_sequences=6).item() for s in halves_sl]
    # micro-batches hold 14 and 10 tokens: the sum is the mean of the two token means (TRL's loss / GA), not the
    # token mean of the union
    pt, _ = per_token_policy_loss(lp, old, adv, epsilon_low=0.2, epsilon_high=0.28, dual_clip=3.0)
    pt = (pt + 0.04 * kl_penalty(lp, ref)).detach()
    halves = [masked_mean(pt[s], mask[s]).item() for s in halves_sl]
    assert sum(micro) == pytest.approx(sum(halves) / 2)
    assert sum(micro) != pytest.approx(full)


# ---------------------------------------------------------------- TRL reference


def test_matches_trl_formula():
    """Our clipped + k3 + aggregation equals TRL's ``GRPOTrainer._compute_loss`` formula, written out here (no TRL
    import needed; tests/test_bench_trl.py checks against TRL's own trainer)."""
    lp, old, ref, adv, mask = _batch(seed=1)
    beta, eps_low, eps_high, max_len = 0.04, 0.2, 0.28, 7
    m = mask.to(D)

    # --- TRL (token-level importance sampling, no delta, no vLLM correction), as in trl/trainer/grpo_trainer.py
    advantages = adv.unsqueeze(1)
    coef_1 = torch.exp(lp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_kl = torch.exp(ref - lp) - (ref - lp) - 1
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages) + beta * per_token_kl
    trl = {
        "grpo": ((per_token_loss * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean(),
        "bnpo": (per_token_loss * m).sum() / m.sum().clamp(min=1.0),
        "dr_grpo": (per_token_loss * m).sum() / (per_token_loss.size(0) * max_len),
        "dapo": (per_token_loss * m).sum() / m.sum().clamp(min=1.0),  # num_items_in_batch, one process, GA = 1
    }
    is_low = (coef_1 < 1 - eps_low) & (advantages < 0)
    is_high = (coef_1 > 1 + eps_high) & (advantages > 0)
    trl_low = ((is_low.to(D) * m).sum() / m.sum()).item()
    trl_high = ((is_high.to(D) * m).sum() / m.sum()).item()
    trl_region = (((is_low | is_high).to(D) * m).sum() / m.sum()).item()

    # --- ours
    pt, ind = per_token_policy_loss(lp, old, adv, epsilon_low=eps_low, epsilon_high=eps_high)
    pt = pt + beta * kl_penalty(lp, ref, "k3")
    for loss_type, expected in trl.items():
        ours = aggregate_loss(pt, mask, loss_type, max_completion_length=max_len)
        torch.testing.assert_close(ours, expected)
        g_ours = torch.autograd.grad(ours, lp, retain_graph=True)[0]
        g_trl = torch.autograd.grad(expected, lp, retain_graph=True)[0]
        torch.testing.assert_close(g_ours, g_trl)
    assert masked_mean(ind["clip_ratio/low_mean"], mask).item() == pytest.approx(trl_low)
    assert masked_mean(ind["clip_ratio/high_mean"], mask).item() == pytest.approx(trl_high)
    assert masked_mean(ind["clip_ratio/region_mean"], mask).item() == pytest.approx(trl_region)
    assert trl_region > 0  # the batch really exercises the clip
