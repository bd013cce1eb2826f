"""What every supervised loop gets from `latentrl.sft.loop.launch`: bf16 autocast with fp32 weights, LoRA adapters
(the base frozen, the adapter saved), and the shared options declared once. Coconut's own versions of these checks
are in tests/test_coconut.py; the 2-process runs of all three loops are in tests/test_distributed.py."""

from __future__ import annotations

import pytest
import torch

from latentrl.config import LoraConfig
from latentrl.data import make_examples, task_vocabulary
from latentrl.sft.cot import CoTSFTConfig, train_sft
from latentrl.sft.superposition import SuperpositionSFTConfig, train_superposition_sft


def tiny(seed=0):
    from latentrl.testing import tiny_latent_model

    return tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=seed, hidden=32)


def train(loop: str, model, **kw):
    data = make_examples("chain_sum", 8, seed=0, length=3)
    common = dict(per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
                  disable_tqdm=True, seed=0, **kw)
    if loop == "cot":
        return train_sft(CoTSFTConfig(eval_steps=0, **common), model, data)
    return train_superposition_sft(SuperpositionSFTConfig(top_k=2, **common), model, data)


@pytest.mark.parametrize("loop", ["cot", "superposition"])
def test_bf16_autocast_rounds_the_forward_and_keeps_fp32_weights(loop):
    losses = {}
    for mp in ("no", "bf16"):
        lm = tiny()
        losses[mp] = [r["loss"] for r in train(loop, lm, mixed_precision=mp).train]
        assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert losses["bf16"] != losses["no"]  # bf16 rounding shows in every loss...
    assert losses["bf16"] == pytest.approx(losses["no"], rel=3e-2)  # ...and nothing else differs


@pytest.mark.parametrize("loop", ["cot", "superposition"])
def test_lora_trains_only_the_adapter_and_saves_it(loop, tmp_path):
    lm = tiny()
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    hist = train(loop, lm, lora=LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"]))
    assert lm.is_peft and hist.train[-1]["loss"] < hist.train[0]["loss"]
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    base = lm.model.get_base_model().state_dict()
    frozen = [k for k in before if not any(m in k for m in ("q_proj", "v_proj", "embed_tokens", "lm_head"))]
    assert frozen and all(torch.equal(before[k], base[k]) for k in frozen)
    lm.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "adapter_config.json").is_file()
