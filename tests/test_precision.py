"""Precision and memory: bf16 autocast steps, model dtype on load, and chunked log-softmax for large vocabularies."""

import math

import pytest
import torch

from latentrl.config import ConfigError, GRPOConfig
from latentrl.data import make_examples, task_vocabulary
from latentrl.replay import replay
from latentrl.rl.trainer import GRPOTrainer
from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout
from latentrl.testing import tiny_latent_model, word_count_reward
from latentrl.thoughts import build_thought_operator
from tests.conftest import gen, make_prompts


def trainer(tmp_path, **kw):
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                gradient_accumulation_steps=2, num_generations=4, max_completion_length=8, learning_rate=1e-2,
                save_steps=0, report_to=["none"], beta=0.04, loss_type="dapo")
    base.update(kw)
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    return GRPOTrainer(GRPOConfig(**base), lm, make_examples("chain_sum", 16, seed=0, length=3),
                       reward_funcs=[word_count_reward])


def test_bf16_loss_is_close_to_fp32_on_the_same_batch(tmp_path):
    t32 = trainer(tmp_path / "fp32")
    batch, _ = t32._collect_step_batch()
    local = t32._prepare_for_update(batch)
    n, tokens = batch.rewards.numel(), float(t32.loss_mask(batch).sum())
    with torch.no_grad():
        loss32, m32 = t32.compute_loss(local, num_sequences=n, num_tokens=tokens, num_micro=1)
        t16 = trainer(tmp_path / "bf16", mixed_precision="bf16")  # same initial weights (seeded builder)
        assert t16.accelerator.mixed_precision == "bf16"
        with t16.accelerator.autocast():
            loss16, m16 = t16.compute_loss(local, num_sequences=n, num_tokens=tokens, num_micro=1)
    assert loss16.item() != loss32.item(), "autocast had no effect"
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.05, abs=2e-3)
    assert m16["entropy"].item() == pytest.approx(m32["entropy"].item(), rel=0.02)
    assert m16["kl"].item() == pytest.approx(m32["kl"].item(), abs=2e-3)


def test_bf16_training_step_runs(tmp_path):
    t = trainer(tmp_path, mixed_precision="bf16")
    before = [p.detach().clone() for p in t.model.parameters()]
    m = t.train_step()
    assert math.isfinite(m["loss"]) and m["grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # fp32 master weights, bf16 compute
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


def test_unknown_mixed_precision_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="mixed_precision"):
        GRPOConfig(model_name_or_path="x", mixed_precision="fp8")


def test_dtype_option_loads_the_model_in_that_dtype(tmp_path):
    from latentrl.cli import build_model_for

    tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32).save_pretrained(tmp_path / "m")
    for dtype, want in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        cfg = GRPOConfig(model_name_or_path=str(tmp_path / "m"), dtype=dtype)
        assert build_model_for(cfg).model.dtype == want


@pytest.mark.parametrize("name", ["gumbel_topk", "soft_mixture"])
@pytest.mark.parametrize("path", ["buffers", "autograd"])
def test_large_vocab_replay_materialises_one_chunk_of_logits_at_a_time(path, name, monkeypatch):
    """V = 50k: no autograd-saved tensor is V wide (chunks are recomputed in the backward), every LM-head call is
    at most one chunk of rows, and the gradients equal those of a single-chunk replay. Token positions go through
    `head_token_logprobs` (two reused chunk x V buffers, no module call) unless the head needs the autograd path;
    so do Latent-GRPO's likelihood's latent positions (`head_row_logprobs`), which on the autograd path call the
    head chunk by chunk (its log-prob reads their whole rows); a deterministic operator's never (no log-prob)."""
    if path == "autograd":
        monkeypatch.setattr("latentrl.replay.fused_head_weight", lambda head, h: None)
        monkeypatch.setattr("latentrl.head_logprobs.fused_head_weight", lambda head, h: None)
    V, chunk = 50_000, 8
    lm = tiny_latent_model("qwen2", ["Tom", "is", "a", "cat"], seed=0, hidden=32)
    lm.model.resize_token_embeddings(V, mean_resizing=False)
    ids, mask = make_prompts(lm)
    # Latent-GRPO's likelihood reads whole rows of log-probs (a row function; the authors' surrogate: token terms)
    extra = {"logprob": "likelihood", "noise_scale": 0.1} if name == "gumbel_topk" else {}
    op = build_thought_operator(name, top_k=5, **extra)
    sched = ThinkingSchedule(num_latent_steps=torch.tensor([1, 3, 4]), after_latent_ids=[lm.latent_ids.end])
    r = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=12), op, sched, gen())
    B, C = r.completion_ids.shape
    assert B * C > 3 * chunk and r.latent_mask.any()

    head = lm.model.get_output_embeddings()
    rows: list[int] = []
    hook = head.register_forward_hook(lambda mod, inp, out: rows.append(out.reshape(-1, V).shape[0]))
    saved_v_wide: list[tuple[int, ...]] = []

    def pack(t):
        if t.dim() >= 1 and t.shape[-1] == V:
            saved_v_wide.append(tuple(t.shape))
        return t

    def grads(chunk_size):
        lm.model.zero_grad(set_to_none=True)
        rows.clear()
        saved_v_wide.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = replay(lm, op, r, logits_chunk_size=chunk_size)
        loss = (out.logprobs * r.completion_mask).sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in lm.model.parameters() if p.grad is not None], list(rows)

    loss_c, g_c, rows_c = grads(chunk)
    assert saved_v_wide == []  # nothing V wide is kept for the backward
    # rows the head module scores: on the autograd path only, a stochastic operator's latent positions and the
    # token positions
    n_lat = int(r.latent_mask.sum())
    groups = ([n_lat] if op.stochastic and path == "autograd" else []) + ([B * C - n_lat] if path == "autograd" else [])
    n_chunks = sum(math.ceil(n / chunk) for n in groups)
    # each chunk's forward, and its recompute in the backward where its log-probs depend on the logits
    assert n_chunks <= len(rows_c) <= 2 * n_chunks and all(n <= chunk for n in rows_c)
    loss_1, g_1, rows_1 = grads(10**9)
    assert set(rows_1) == set(groups)
    hook.remove()
    torch.testing.assert_close(loss_c, loss_1)
    for a, b in zip(g_c, g_1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # without gradients no checkpointing is needed: one LM-head call per chunk
    rows.clear()
    head.register_forward_hook(lambda mod, inp, out: rows.append(out.reshape(-1, V).shape[0]))
    with torch.no_grad():
        replay(lm, op, r, logits_chunk_size=chunk)
    assert len(rows) == n_chunks


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 autocast is a GPU feature")
def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="fp16.*GPU"):
        trainer(tmp_path, mixed_precision="fp16")


@pytest.mark.parametrize("kind", ["cot", "coconut"])
@pytest.mark.parametrize("path", ["buffers", "autograd"])
def test_large_vocab_sft_losses_never_form_the_batch_logits(kind, path, monkeypatch):
    """V = 50k: a CoT SFT step and a Coconut forward keep nothing V wide for the backward, and the LM-head module is
    never run on the batch: not at all on the buffer path (`head_token_logprobs`), a chunk of positions at a time on
    the autograd path. (The logits of B x T positions are gigabytes at a real vocabulary.)"""
    from latentrl.head_logprobs import default_logits_chunk
    from latentrl.sft.coconut import CoconutConfig
    from latentrl.sft.coconut.data import build_stage_sample, tokenize_example
    from latentrl.sft.coconut.forward import coconut_forward, collate_coconut
    from latentrl.sft.cot import CoTSFTConfig, build_sft_batch, encode_examples, train_sft

    if path == "autograd":
        monkeypatch.setattr("latentrl.head_logprobs.fused_head_weight", lambda head, h: None)
    V = 50_000
    chunk = default_logits_chunk(V)
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    lm.model.resize_token_embeddings(V, mean_resizing=False)
    data = make_examples("chain_sum", 8, 0, length=3)
    rows: list[int] = []
    lm.model.get_output_embeddings().register_forward_hook(lambda m, i, out: rows.append(out.reshape(-1, V).shape[0]))
    saved_v_wide: list[tuple[int, ...]] = []

    def pack(t):
        if t.dim() >= 1 and t.shape[-1] == V:
            saved_v_wide.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if kind == "cot":
            cfg = CoTSFTConfig(max_steps=1, per_device_train_batch_size=8, eval_steps=0, disable_tqdm=True)
            batch = build_sft_batch(encode_examples(lm.tokenizer, data, "cot"), lm.tokenizer.pad_token_id)
            positions = int((batch["labels"][:, 1:] != -100).sum())  # the positions a label follows
            assert positions < batch["labels"].numel() and positions > chunk
            train_sft(cfg, lm, data)
        else:
            c = CoconutConfig(max_latent_stage=3, c_thought=1, disable_tqdm=True)
            toks = [tokenize_example(lm.tokenizer, ex) for ex in data]
            b = collate_coconut([build_stage_sample(t, 1, c, lm.latent_ids) for t in toks], lm.tokenizer.pad_token_id)
            positions = int((b.labels[:, 1:] != -100).sum())
            coconut_forward(lm, b, bptt=True).loss.backward()
    assert saved_v_wide == []
    if path == "buffers":
        assert rows == []
    else:
        assert rows and all(n <= chunk for n in rows) and sum(rows) == 2 * positions  # forward + recompute
