"""Gradient checkpointing recomputes activations in the backward pass and changes nothing else: the same loss and
gradients for one GRPO step, with plain token inputs and with a latent method whose inputs are embeddings."""

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_lora import lora_trainer  # noqa: E402

from latentrl.replay import replay  # noqa: E402
from latentrl.testing import tiny_chain_sum_model  # noqa: E402


def layer0_mlp(t):
    """A module inside the checkpointed layer forward."""
    return t.model.backbone().layers[0].mlp


def one_step(method, out, checkpointing, lora):
    """One optimizer step; returns the metrics, every gradient, and how often decoder layer 0's MLP ran forward."""
    t = lora_trainer(method, out, tiny_chain_sum_model(), max_steps=1, save_steps=0, gradient_checkpointing=checkpointing,
                     lora={"enabled": lora})
    calls = []
    mlp = layer0_mlp(t)
    forward = mlp.forward

    def counted(*args, **kwargs):  # (forward hooks do not fire during the backward recompute; this does)
        calls.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    mlp.forward = counted
    # checkpointing runs the training forward without a KV cache, i.e. without the shared-prompt replay; take the
    # same full-sequence path in the plain run so that layer-0 calls compare one to one
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("latentrl.rl.trainer.replay", functools.partial(replay, share_prompts=False))
        metrics = t.train_step()
    grads = {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
    return metrics, grads, calls


@pytest.mark.parametrize("method,lora", [("grpo", False), ("hrpo", False), ("lepo", True)])
def test_checkpointing_keeps_loss_and_gradients(tmp_path, method, lora):
    m0, g0, calls0 = one_step(method, tmp_path / "plain", False, lora)
    m1, g1, calls1 = one_step(method, tmp_path / "ckpt", True, lora)
    # checkpointing is really on: layer 0 runs once more per training forward (the recompute in backward)
    assert calls1.count(True) == 2 * calls0.count(True) > 0 and calls1.count(False) == calls0.count(False)
    assert m0["grad_norm"] > 0
    assert m1["loss"] == pytest.approx(m0["loss"], rel=1e-6, abs=1e-7)
    assert m1["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5, msg=n)
