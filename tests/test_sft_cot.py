"""CoT / no-CoT SFT: loss masking, hand-computed CE, learning on a tiny set, determinism, config checks."""

from __future__ import annotations

import math

import pytest
import torch

from latentrl.config import ConfigError, load_config
from latentrl.data import Example, format_cot, format_no_cot, format_prompt, make_examples
from latentrl.logger import read_metrics
from latentrl.sft.cot import (
    IGNORE_INDEX,
    CoTSFTConfig,
    build_sft_batch,
    encode_examples,
    lr_lambda,
    masked_lm_loss,
    train_sft,
)
from latentrl.testing import tiny_latent_model

EXAMPLES = [Example("3 5 2", ["<< 3 + 5 = 8 >>", "<< 8 + 2 = 0 >>"], "0"), Example("7 1", ["<< 7 + 1 = 8 >>"], "8")]


def tiny_sum_data(n=8, seed=0):
    return make_examples("chain_sum", n, seed, length=3)


def quiet(**kw):
    kw.setdefault("disable_tqdm", True)
    kw.setdefault("eval_steps", 0)
    kw.setdefault("logging_steps", 1)
    return CoTSFTConfig(**kw)


# ------------------------------------------------------------------------------------------------ batches & loss
@pytest.mark.parametrize("mode", ["cot", "no_cot"])
def test_batch_labels_cover_exactly_the_target_and_eos(mode):
    lm = tiny_latent_model("qwen2")
    tok = lm.tokenizer
    enc = encode_examples(tok, EXAMPLES, mode)
    batch = build_sft_batch(enc, tok.pad_token_id)
    fmt = format_cot if mode == "cot" else format_no_cot
    for i, ex in enumerate(EXAMPLES):
        p = tok(format_prompt(ex), add_special_tokens=False)["input_ids"]
        t = tok(fmt(ex), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p) + len(t)
        assert batch["input_ids"][i, :n].tolist() == p + t  # right-padded: text starts at position 0
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        labels = batch["labels"][i].tolist()
        assert labels[: len(p)] == [IGNORE_INDEX] * len(p)
        assert labels[len(p) : n] == t
        assert set(labels[n:]) <= {IGNORE_INDEX}
        assert tok.decode(t[:-1]).split() == fmt(ex).split()


def test_masked_loss_equals_hand_computed_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, -100, 3, 1], [-100, 2, -100, -100]])
    loss, stats = masked_lm_loss(logits, labels)
    # logits[:, j] predicts labels[:, j + 1]; the target tokens are (row 0, 2), (row 0, 3), (row 1, 1)
    terms = []
    for b, j in [(0, 2), (0, 3), (1, 1)]:
        row = logits[b, j - 1]
        terms.append(-(row[labels[b, j]] - math.log(sum(math.exp(v) for v in row.tolist()))))
    assert loss.item() == pytest.approx(float(sum(terms)) / 3, rel=1e-6)
    assert stats["num_tokens"].item() == 3


def test_loss_ignores_prompt_positions():
    lm = tiny_latent_model("qwen2", seed=1)
    tok = lm.tokenizer
    batch = build_sft_batch(encode_examples(tok, EXAMPLES, "cot"), tok.pad_token_id)
    logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach()
    logits.requires_grad_(True)
    loss, _ = masked_lm_loss(logits, batch["labels"])
    loss.backward()
    # position j's logits are scored only if labels[j + 1] is a target token
    scored = torch.zeros_like(batch["labels"], dtype=torch.bool)
    scored[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX
    grad_norm = logits.grad.abs().sum(-1)
    assert (grad_norm[~scored] == 0).all()
    assert (grad_norm[scored] > 0).all()
    # changing what the model predicts at prompt/padding positions does not change the loss
    noisy = logits.detach().clone()
    noisy[~scored] += 10 * torch.randn_like(noisy[~scored])
    assert masked_lm_loss(noisy, batch["labels"])[0].item() == pytest.approx(loss.item(), abs=1e-6)
    # and the loss equals HF's built-in loss with the prompt labels set to -100
    hf = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert hf.item() == pytest.approx(loss.item(), rel=1e-5)


def test_encode_rejects_unknown_words_and_long_examples():
    lm = tiny_latent_model("qwen2")
    with pytest.raises(ValueError, match="does not know"):
        encode_examples(lm.tokenizer, [Example("zebra 1", [], "1")], "cot")
    with pytest.raises(ValueError, match="max_length"):
        encode_examples(lm.tokenizer, EXAMPLES, "cot", max_length=5)
    with pytest.raises(ValueError, match="unknown SFT mode"):
        encode_examples(lm.tokenizer, EXAMPLES, "latent")


def test_lr_schedules():
    warm = lr_lambda("constant_with_warmup", 4, 20)
    assert [warm(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = lr_lambda("cosine", 0, 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert lr_lambda("constant", 4, 20)(0) == 1.0
    assert lr_lambda("linear", 0, 10)(5) == pytest.approx(0.5)


def test_config_validation():
    with pytest.raises(ConfigError, match="mode"):
        CoTSFTConfig(mode="latent")
    with pytest.raises(ConfigError, match="learning_rate"):
        CoTSFTConfig(learning_rate=0)
    cfg = load_config(CoTSFTConfig, None, ["mode=no_cot", "max_steps=7", "lr_scheduler_type=cosine"])
    assert (cfg.mode, cfg.max_steps, cfg.lr_scheduler_type) == ("no_cot", 7, "cosine")


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_sft_overfits_a_tiny_set(arch, tmp_path):
    torch.set_num_threads(1)
    data = tiny_sum_data(8)
    lm = tiny_latent_model(arch, seed=0)
    # 160 steps: at 80 the loss was still ~0.4 (not memorised) and greedy decoding flipped with library versions
    cfg = quiet(max_steps=160, per_device_train_batch_size=8, learning_rate=3e-3, warmup_steps=5, eval_steps=80,
                output_dir=str(tmp_path), logging_steps=20)
    hist = train_sft(cfg, lm, data, data[:4])
    first, last = hist.train[0]["loss"], hist.train[-1]["loss"]
    assert last < 0.05 * first
    assert hist.train[-1]["token_accuracy"] > 0.95
    assert [r["step"] for r in hist.eval] == [80, 160]
    assert hist.final_eval is not None and hist.final_eval["n"] == 4
    assert hist.final_eval["pass_at_1"] >= 0.75  # memorised: greedy decoding reproduces the chains
    # metrics.jsonl holds the same records
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs if "loss" in r] == [r["step"] for r in hist.train]
    assert not lm.training  # handed back in eval mode


def test_sft_is_deterministic_by_seed():
    torch.set_num_threads(1)
    data = tiny_sum_data(16)

    def run(seed):
        lm = tiny_latent_model("qwen2", seed=0)
        hist = train_sft(quiet(max_steps=6, per_device_train_batch_size=4, seed=seed), lm, data)
        return [r["loss"] for r in hist.train], {k: v.clone() for k, v in lm.model.state_dict().items()}

    losses_a, weights_a = run(0)
    losses_b, weights_b = run(0)
    losses_c, _ = run(1)
    assert losses_a == losses_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert losses_a != losses_c  # another seed, another data order


def test_a_resumed_run_trains_exactly_as_the_uninterrupted_one(tmp_path, killed_in_step):
    """10 examples in batches of 4 (batches span passes over the data), a cosine schedule with warmup, logging every
    4 steps (a window open at the checkpoint): killed during step 8, resumed from checkpoint-6 into a model built
    from another seed."""
    import latentrl.optimizer_steps as step_loop  # the engine whose optimizer step is killed
    from latentrl.checkpoint import list_checkpoints

    torch.set_num_threads(1)
    data = tiny_sum_data(10)
    opts = dict(max_steps=12, per_device_train_batch_size=4, logging_steps=4, lr_scheduler_type="cosine",
                warmup_steps=3, eval_steps=5, seed=2)
    whole = tiny_latent_model("qwen2", seed=0)
    hist_a = train_sft(quiet(output_dir=str(tmp_path / "a"), **opts), whole, data, data[:2])
    b = str(tmp_path / "b")
    with killed_in_step(step_loop, 8):
        train_sft(quiet(output_dir=b, save_steps=3, **opts), tiny_latent_model("qwen2", seed=0), data, data[:2])
    assert [p.name for p in list_checkpoints(b)] == ["checkpoint-3", "checkpoint-6"]
    resumed = tiny_latent_model("qwen2", seed=1)
    hist_b = train_sft(quiet(output_dir=b, save_steps=3, resume_from_checkpoint="latest", **opts), resumed, data,
                       data[:2])
    assert all(torch.equal(a, c) for a, c in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()))
    assert [(r["step"], r["loss"], r["learning_rate"]) for r in hist_b.train] == [
        (r["step"], r["loss"], r["learning_rate"]) for r in hist_a.train]
    assert [r["step"] for r in hist_b.eval] == [r["step"] for r in hist_a.eval] == [5, 10, 12]
    logged = [(r["step"], r["loss"]) for r in read_metrics(b) if "loss" in r]
    assert logged == [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "a") if "loss" in r]


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoints(tmp_path, monkeypatch):
    """A NaN loss in step 5 (after checkpoint-4) stops the run with TrainingDivergedError naming the folder; the
    weights stay those of step 4 and no checkpoint of a poisoned step is written."""
    import latentrl.optimizer_steps as engine
    from latentrl import TrainingDivergedError
    from latentrl.checkpoint import list_checkpoints

    torch.set_num_threads(1)
    real, calls = engine.OptimizerSteps._forwards, []

    def poisoned(self, loss_fn, idx):
        calls.append(1)
        for loss, stats in real(self, loss_fn, idx):
            yield (loss * float("nan") if len(calls) == 5 else loss), stats

    monkeypatch.setattr(engine.OptimizerSteps, "_forwards", poisoned)
    out = str(tmp_path / "run")
    lm = tiny_latent_model("qwen2", seed=0)
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss \(nan\) in optimizer step 5.*checkpoint"):
        train_sft(quiet(output_dir=out, save_steps=2, max_steps=8, per_device_train_batch_size=4), lm, tiny_sum_data(8))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    saved = tiny_latent_model("qwen2", seed=1)
    saved.load_weights(list_checkpoints(out)[-1])
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), saved.model.state_dict().values()))


def test_no_cot_mode_trains_on_the_answer_only():
    torch.set_num_threads(1)
    data = tiny_sum_data(8)
    lm = tiny_latent_model("qwen2", seed=0)
    tok = lm.tokenizer
    hist = train_sft(quiet(mode="no_cot", max_steps=2, per_device_train_batch_size=8), lm, data, data[:2])
    assert len(hist.train) == 2
    enc = encode_examples(tok, data, "no_cot")
    for (_, t), ex in zip(enc, data):
        assert tok.decode(t, skip_special_tokens=True).split() == ["####", *ex.answer.split()]
    # the no-CoT eval budget is the short target, not a CoT-sized one
    assert hist.final_eval["mean_reasoning_positions"] <= max(len(t) for _, t in enc) + 8


@pytest.mark.parametrize("path", ["buffers", "autograd"])
def test_the_loss_from_hidden_states_equals_the_logits_loss_and_hf_loss(path, monkeypatch):
    """`masked_lm_loss_from_hidden` (what CoT SFT trains with: the LM head a few positions at a time) gives
    `masked_lm_loss` on the full logits and HF's own `labels=` loss, the same gradient in every parameter, and the
    same accuracy stats; on both scoring paths (a plain float32 head's reused buffers; any other head's autograd)."""
    from latentrl.sft.cot import masked_lm_loss_from_hidden

    if path == "autograd":
        monkeypatch.setattr("latentrl.head_logprobs.fused_head_weight", lambda head, h: None)
    lm = tiny_latent_model("qwen2", seed=1)
    tok = lm.tokenizer
    batch = build_sft_batch(encode_examples(tok, EXAMPLES, "cot"), tok.pad_token_id)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    hf = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    ref_loss, ref_stats = masked_lm_loss(hf.logits, batch["labels"])
    ref_grads = torch.autograd.grad(hf.loss, params)
    _, hidden, _ = lm.forward_embeds(lm.embed(batch["input_ids"]), attention_mask=batch["attention_mask"],
                                     compute_logits=False)
    loss, stats = masked_lm_loss_from_hidden(lm.model.get_output_embeddings(), hidden, batch["labels"], chunk=3)
    grads = torch.autograd.grad(loss, params)
    assert loss.item() == pytest.approx(hf.loss.item(), rel=1e-5)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for key in ("num_tokens", "token_accuracy", "sequence_accuracy"):
        assert stats[key].item() == pytest.approx(ref_stats[key].item(), abs=1e-7), key
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_token_accuracy_from_hidden_counts_the_argmax_like_the_logits_version():
    """A hand-built head whose argmax is the label at some positions and not at others: the stats from hidden states
    equal those from the logits (`logprobs >= max_logprob` reads the argmax exactly on the buffer path)."""
    from latentrl.sft.cot import masked_lm_loss_from_hidden

    head = torch.nn.Linear(3, 5, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(5, 3) * 4.0)  # hidden e_k -> logit 4 at id k (k < 3), 0 elsewhere
    hidden = torch.eye(3)[[0, 1, 2, 0]][None]  # (1, 4, 3): argmax ids 0, 1, 2, (0)
    labels = torch.tensor([[-100, 0, 2, 2]])  # position 0 predicts 0 (right), 1 predicts 2 (wrong), 2 predicts 2
    loss, stats = masked_lm_loss_from_hidden(head, hidden, labels)
    ref_loss, ref_stats = masked_lm_loss(head(hidden), labels)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert stats["token_accuracy"].item() == pytest.approx(2 / 3) == ref_stats["token_accuracy"].item()
    assert stats["sequence_accuracy"].item() == 0.0 == ref_stats["sequence_accuracy"].item()
