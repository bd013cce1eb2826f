"""The shared optimizer step (`latentrl.optimizer_steps`) that the SFT engine and the side-module fits run on: its
step equals a hand-written AdamW step, micro-batches accumulate to the whole batch's gradient, extra parameters are
clipped with the model's, and the data order and metric window behave as documented."""

from __future__ import annotations

import copy

import pytest
import torch

from latentrl.optimizer_steps import (
    EpochOrder,
    MetricWindow,
    OptimizerSteps,
    TrainingDivergedError,
    clip_gradients,
    optimizer_step,
)


def test_clip_gradients_reports_the_norm_before_clipping():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_gradients([p], 0.0) == pytest.approx(5.0) and p.grad.tolist() == [3.0, 4.0]
    assert clip_gradients([p], 1.0) == pytest.approx(5.0)
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0, rel=1e-5)


def test_epoch_order_is_a_seeded_permutation_per_pass():
    order = EpochOrder(5, torch.Generator().manual_seed(0))
    draws = [order.draw(2) for _ in range(5)]
    flat = [i for d in draws for i in d]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    again = EpochOrder(5, torch.Generator().manual_seed(0))
    assert [again.draw(2) for _ in range(5)] == draws


def test_pass_aligned_draws_never_span_two_passes_and_follow_the_same_permutations():
    """Coconut's passes: `start_pass` draws the permutation `draw` would, batches stop at the pass's end (the last
    one shorter), `end_pass` drops the rest; the state round-trips mid-pass."""
    order, plain = EpochOrder(5, torch.Generator().manual_seed(0)), EpochOrder(5, torch.Generator().manual_seed(0))
    order.start_pass()
    assert [order.draw_in_pass(2) for _ in range(3)] == [plain.draw(2), plain.draw(2), plain.draw(1)]
    assert order.pass_done
    order.start_pass()
    first = order.draw_in_pass(2)
    saved = order.state_dict()
    rest = [order.draw_in_pass(2), order.draw_in_pass(2)]
    again = EpochOrder(5, torch.Generator().manual_seed(7))
    again.load_state_dict(saved)
    assert [again.draw_in_pass(2), again.draw_in_pass(2)] == rest and again.pass_done
    assert sorted(first + rest[0] + rest[1]) == list(range(5))
    order.load_state_dict(saved)
    order.end_pass()
    assert order.pass_done and order.draw_in_pass(2) == []


def test_metric_window_means_and_reset():
    w = MetricWindow()
    w.add({"loss": 1.0, "acc": 0.5})
    w.add({"loss": 3.0, "acc": 1.0})
    assert w.pop() == {"loss": 2.0, "acc": 0.75}
    w.add({"loss": 4.0})
    assert w.pop() == {"loss": 4.0}


def test_one_pass_walks_one_fresh_permutation_in_order():
    order, plain = EpochOrder(5, torch.Generator().manual_seed(3)), EpochOrder(5, torch.Generator().manual_seed(3))
    assert list(order.one_pass(2)) == [plain.draw(2), plain.draw(2), plain.draw(1)]
    assert list(order.one_pass(5)) == [plain.draw(5)]



def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(12, 5, generator=g), torch.randn(12, generator=g)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return net, X, y


def _mse(net, X, y, idx):
    return (net(X[idx]).squeeze(-1) - y[idx]).pow(2).mean()


def test_a_step_equals_a_hand_written_adamw_step_with_clipping_and_schedule():
    torch.manual_seed(0)
    net, X, y = _problem()
    ref = copy.deepcopy(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    steps = OptimizerSteps(list(net.parameters()), opt, sched, max_grad_norm=0.5)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda s: 1.0 / (1 + s))
    for idx in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]):
        out = steps.step(lambda b, share: (_mse(net, X, y, torch.tensor(share)), {"n": float(len(share))}), idx)
        ref_opt.zero_grad()
        _mse(ref, X, y, torch.tensor(idx)).backward()
        norm = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5)
        lr = ref_opt.param_groups[0]["lr"]
        ref_opt.step()
        ref_sched.step()
        assert out.grad_norm == pytest.approx(float(norm)) and out.learning_rate == lr and out.stats == {"n": 4.0}
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert steps.window.pop() == {"n": 4.0} and steps.train_time > 0


def test_micro_batches_accumulate_to_the_whole_batch_gradient():
    """A loss function that yields per-micro-batch shares of the mean trains as the one-forward loss does."""
    net, X, y = _problem(1)
    twin = copy.deepcopy(net)
    idx = list(range(12))

    def whole(b, share):
        loss = _mse(net, X, y, torch.tensor(share))
        return loss, {"loss": loss.item()}

    def micro(b, share):
        for part in (share[:5], share[5:]):
            loss = _mse(twin, X, y, torch.tensor(part)) * len(part) / len(share)
            yield loss, {"loss": loss.item()}

    a = OptimizerSteps(list(net.parameters()), torch.optim.SGD(net.parameters(), lr=0.1)).step(whole, idx)
    b = OptimizerSteps(list(twin.parameters()), torch.optim.SGD(twin.parameters(), lr=0.1)).step(micro, idx)
    assert b.stats["loss"] == pytest.approx(a.stats["loss"]) and b.grad_norm == pytest.approx(a.grad_norm, rel=1e-5)
    assert b.loss == pytest.approx(a.loss) == pytest.approx(a.stats["loss"])
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_extra_parameters_are_clipped_with_the_model_and_left_out_of_the_unclipped_norm():
    w, extra = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))

    def loss(b, share):
        return 3.0 * w.sum() + 4.0 * extra.sum(), {}

    clipped = OptimizerSteps([w], torch.optim.SGD([w, extra], lr=1.0), max_grad_norm=1.0, extra_params=[extra])
    assert clipped.step(loss, [0]).grad_norm == pytest.approx(5.0)  # the joint norm
    assert w.item() == pytest.approx(-0.6) and extra.item() == pytest.approx(-0.8)
    w.data.zero_()
    extra.data.zero_()
    plain = OptimizerSteps([w], torch.optim.SGD([w, extra], lr=1.0), extra_params=[extra])
    assert plain.step(loss, [0]).grad_norm == pytest.approx(3.0)  # the model's alone
    assert w.item() == -3.0 and extra.item() == -4.0


def test_optimizer_step_reads_the_rate_before_the_schedule_moves():
    p = torch.nn.Parameter(torch.ones(1))
    p.grad = torch.ones(1)
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    assert optimizer_step(opt, sched) == 1.0 and opt.param_groups[0]["lr"] == 0.5 and p.item() == 0.0


@pytest.mark.parametrize("where", ["loss", "second micro-batch", "gradient"])
def test_a_non_finite_step_raises_and_updates_nothing(where):
    """A NaN loss (in any micro-batch) or gradient stops the run before the optimizer moves: weights, AdamW state and
    the schedule stay as the last good step left them."""
    net, X, y = _problem(2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    steps = OptimizerSteps(list(net.parameters()), opt, sched, max_grad_norm=1.0,
                           diverged_hint=lambda n: f"in optimizer step {n}; try lr 1e-4")
    steps.step(lambda b, share: (_mse(net, X, y, torch.tensor(share)), {}), [0, 1, 2])
    before = copy.deepcopy((net.state_dict(), opt.state_dict(), sched.state_dict()))

    def poisoned(b, share):
        if where == "loss":
            yield _mse(net, X, y, torch.tensor(share)) * float("nan"), {}
        elif where == "second micro-batch":
            yield _mse(net, X, y, torch.tensor(share[:1])), {}
            yield _mse(net, X, y, torch.tensor(share[1:])) + float("inf"), {}
        else:  # a finite loss whose gradient is not
            w = net[0].weight[0, 0]
            yield torch.sqrt(w - w.detach()) + _mse(net, X, y, torch.tensor(share)), {}  # sqrt'(0) = inf

    what = "gradient norm" if where == "gradient" else "loss"
    with pytest.raises(TrainingDivergedError, match=rf"non-finite {what} .* in optimizer step 2; .*try lr 1e-4"):
        steps.step(poisoned, [3, 4, 5])
    after = (net.state_dict(), opt.state_dict(), sched.state_dict())
    for a, b in zip(before[0].values(), after[0].values(), strict=True):
        assert torch.equal(a, b)
    assert after[1]["state"][0]["step"] == before[1]["state"][0]["step"] and after[2] == before[2]
    assert all(p.grad is None for p in net.parameters()) and steps.num_steps == 1


def test_a_loss_without_gradient_is_counted_not_backpropagated():
    """A micro-batch with nothing to train (e.g. every advantage zero) adds its loss value and stats and no
    gradient."""
    w = torch.nn.Parameter(torch.ones(1))

    def pieces(b, share):
        yield (2.0 * w).sum(), {"n": 1.0}
        yield torch.tensor(0.5), {"n": 1.0}  # requires no grad

    out = OptimizerSteps([w], torch.optim.SGD([w], lr=1.0)).step(pieces, [0, 1])
    assert out.loss == 2.5 and out.stats == {"n": 2.0} and out.grad_norm == 2.0 and w.item() == -1.0
