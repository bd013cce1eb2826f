"""Coconut curriculum SFT: the KV-cached multi-pass forward against a naive full recompute (loss and gradients),
the no-BPTT (LatR) variant, curriculum data per stage, stage schedule and optimizer resets, uniform_prob mixing,
batched generation, presets, and the loaders Coconut reads (ProsQA, ProntoQA, GSM8k-Aug)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentrl.config import ConfigError, LoraConfig, load_config
from latentrl.data import DataFormatError, Example, format_cot, format_prompt, load_icot, load_prontoqa, load_prosqa
from latentrl.data.paths import find_real_data_file
from latentrl.sft.coconut import (
    IGNORE_INDEX,
    CoconutConfig,
    build_stage_sample,
    coconut_eval_thoughts,
    coconut_forward,
    coconut_generate,
    coconut_prompt_text,
    coconut_rollout,
    collate_coconut,
    stage_of_epoch,
    stage_samples,
    tokenize_example,
    train_coconut,
)
from latentrl.testing import tiny_latent_model

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORDS = ["Tom", "is", "a", "cat", "dog"]

# three rows with different prompt lengths and, at the stages below, 2, 0 and 3 thoughts
EXAMPLES = [
    Example("1 2 3", ["4 5", "6", "7 8 9"], "3"),
    Example("Tom is a cat", ["1", "2"], "5"),
    Example("9", ["1 1", "2 2", "3 3"], "7 7"),
]
STAGES = [2, 0, 3]


def shared_file(relative: str) -> Path:
    path = find_real_data_file(relative)
    if path is None:
        pytest.skip(f"real data file {relative} not present (only in shared/data beside a project checkout)")
    return path


def model(arch="qwen2", seed=0, **shape):
    lm = tiny_latent_model(arch, WORDS, seed=seed, **shape)
    lm.model.eval()  # no dropout: both computations must be the same function
    untie_latent_rows(lm, seed)
    return lm


def untie_latent_rows(lm, seed=0):
    """The three latent tokens start as copies of `<<` (Coconut's init), so their logits tie exactly with it and
    greedy decoding would pick among equal maxima by rounding noise; give them distinct rows."""
    gen = torch.Generator().manual_seed(seed)
    ids = [lm.latent_ids.start, lm.latent_ids.latent, lm.latent_ids.end]
    with torch.no_grad():
        for emb in {lm.model.get_input_embeddings(), lm.model.get_output_embeddings()}:
            emb.weight[ids] += 0.02 * torch.randn(len(ids), emb.weight.shape[1], generator=gen)


def cfg(**kw):
    kw.setdefault("max_latent_stage", 3)
    kw.setdefault("num_epochs", 10)
    kw.setdefault("disable_tqdm", True)
    return CoconutConfig(**kw)


def batch_samples(lm, c=1):
    c_ = cfg(c_thought=c)
    toks = [tokenize_example(lm.tokenizer, ex) for ex in EXAMPLES]
    return [build_stage_sample(t, s, c_, lm.latent_ids) for t, s in zip(toks, STAGES)]


def grads(lm):
    return {n: p.grad.detach().clone() for n, p in lm.named_parameters() if p.grad is not None}


def hf_forward(lm, embeds):
    """(logits, last hidden state) of the wrapped HF model itself: its own `inputs_embeds` path and its
    `output_hidden_states`' last entry (post final norm in HF), nothing of the library's `forward_embeds`."""
    out = lm.model(inputs_embeds=embeds, output_hidden_states=True, return_dict=True)
    return out.logits, out.hidden_states[-1]


def naive_row_inputs(lm, s, detach_thoughts=False):
    """One row's input embeddings, no padding, no cache: each thought is the HF model's last hidden state of a full
    forward over everything before it."""
    ids = torch.tensor([s.input_ids])
    emb = lm.model.get_input_embeddings()(ids)[0]
    cols = [emb[i] for i in range(ids.shape[1])]
    for c in range(s.latent_start, s.latent_start + s.num_latent):
        _, h = hf_forward(lm, torch.stack(cols[:c])[None])
        cols[c] = h[0, -1].detach() if detach_thoughts else h[0, -1]
    return torch.stack(cols)[None]


def naive_loss(lm, samples, detach_thoughts=False):
    """Row by row on the HF model's own outputs (see `naive_row_inputs`), then one full forward over the whole
    sequence. Token-mean CE over the batch."""
    total, count = 0.0, 0
    for s in samples:
        logits, _ = hf_forward(lm, naive_row_inputs(lm, s, detach_thoughts))
        labels = torch.tensor(s.labels[1:])
        sel = labels != IGNORE_INDEX
        total = total + F.cross_entropy(logits[0, :-1][sel].float(), labels[sel], reduction="sum")
        count += int(sel.sum())
    return total / count


# ------------------------------------------------------------------------------------------- the multi-pass forward
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@pytest.mark.parametrize("c", [1, 2])
def test_kv_cached_multipass_equals_naive_recompute(arch, c):
    lm = model(arch)
    samples = batch_samples(lm, c)
    assert [s.num_latent for s in samples] == [2 * c, 0, 3 * c]
    out = coconut_forward(lm, collate_coconut(samples, lm.tokenizer.pad_token_id), bptt=True)
    assert out.num_forwards == 3 * c + 1  # n_max + 1 sequential forwards
    out.loss.backward()
    g_kv = grads(lm)
    lm.zero_grad(set_to_none=True)
    ref = naive_loss(lm, samples)
    ref.backward()
    g_ref = grads(lm)
    torch.testing.assert_close(out.loss.detach(), ref.detach(), atol=1e-5, rtol=1e-5)
    assert set(g_kv) == set(g_ref) and len(g_kv) > 0
    for name in g_ref:
        torch.testing.assert_close(g_kv[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_no_bptt_gradient_does_not_flow_into_the_thoughts(arch):
    lm = model(arch)
    samples = batch_samples(lm)
    b = collate_coconut(samples, lm.tokenizer.pad_token_id)
    out = coconut_forward(lm, b, bptt=False)
    assert out.num_forwards == 3 + 1  # 3 no-grad passes form the thoughts, 1 full forward for the CE
    out.loss.backward()
    g_nobptt = grads(lm)
    lm.zero_grad(set_to_none=True)
    ref = naive_loss(lm, samples, detach_thoughts=True)
    ref.backward()
    g_ref = grads(lm)
    torch.testing.assert_close(out.loss.detach(), ref.detach(), atol=1e-5, rtol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g_nobptt[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)
    # the same loss value as BPTT, but a different gradient: BPTT also differentiates through the thoughts
    lm.zero_grad(set_to_none=True)
    out_bptt = coconut_forward(lm, b, bptt=True)
    out_bptt.loss.backward()
    torch.testing.assert_close(out_bptt.loss.detach(), out.loss.detach(), atol=1e-5, rtol=1e-5)
    diff = max(float((grads(lm)[n] - g_nobptt[n]).abs().max()) for n in g_nobptt)
    assert diff > 1e-6


def test_forward_without_thoughts_is_the_plain_causal_lm_loss():
    lm = model()
    c_ = cfg()
    toks = [tokenize_example(lm.tokenizer, ex) for ex in EXAMPLES]
    samples = [build_stage_sample(t, 0, c_, lm.latent_ids) for t in toks]
    out = coconut_forward(lm, collate_coconut(samples, lm.tokenizer.pad_token_id))
    assert out.num_forwards == 1
    torch.testing.assert_close(out.loss, naive_loss(lm, samples), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- curriculum data
def test_stage_samples_exact_tokens_and_loss_masks():
    lm = model()
    tok = lm.tokenizer
    S, L, E = lm.latent_ids.start, lm.latent_ids.latent, lm.latent_ids.end
    ex = Example("Tom is a cat", ["1 2", "3", "4 5 6"], "7")
    t = tokenize_example(tok, ex)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    q = ids("Tom is a cat ||")
    s1, s2, s3 = ids("1 2"), ids("3"), ids("4 5 6")
    ans = ids("#### 7") + [tok.eos_token_id]
    assert (t.prompt, t.steps, t.answer) == (q, [s1, s2, s3], ans)

    def check(sample, n_latent, kept):
        head = q + [S] + [L] * n_latent + [E]
        assert sample.input_ids == head + kept + ans
        assert sample.labels == [IGNORE_INDEX] * len(head) + kept + ans
        assert sample.num_latent == n_latent and sample.latent_start == len(q) + 1

    c1 = cfg(c_thought=1, max_latent_stage=2)
    check(build_stage_sample(t, 0, c1, lm.latent_ids), 0, s1 + s2 + s3)  # stage 0 = full CoT (empty markers)
    check(build_stage_sample(t, 1, c1, lm.latent_ids), 1, s2 + s3)
    check(build_stage_sample(t, 2, c1, lm.latent_ids), 2, s3)
    check(build_stage_sample(t, 3, c1, lm.latent_ids), 2, [])  # past max_latent_stage: every step dropped
    c2 = cfg(c_thought=2, max_latent_stage=2)
    check(build_stage_sample(t, 1, c2, lm.latent_ids), 2, s2 + s3)  # c thoughts per replaced step
    check(build_stage_sample(t, 9, c2, lm.latent_ids), 4, [])
    # a short example past the last stage: padded to max_latent_stage*c, or its own step count
    short = tokenize_example(tok, Example("Tom is a cat", ["1 2"], "7"))
    pad = cfg(c_thought=2, max_latent_stage=3, pad_latent_to_max=True)
    nopad = cfg(c_thought=2, max_latent_stage=3, pad_latent_to_max=False)
    assert build_stage_sample(short, 4, pad, lm.latent_ids).num_latent == 6
    assert build_stage_sample(short, 4, nopad, lm.latent_ids).num_latent == 2
    # a stage within max_latent_stage but beyond the example's steps keeps k*c thoughts (reference behaviour)
    assert build_stage_sample(short, 3, nopad, lm.latent_ids).num_latent == 6
    assert coconut_eval_thoughts(pad, 5) == 6 and coconut_eval_thoughts(nopad, 5, num_steps=1) == 2
    assert coconut_eval_thoughts(c1, 1) == 1


def test_thoughts_per_step_gives_each_replaced_step_its_own_count():
    """thoughts_per_step [1, 3] (c_thought 2 for later steps): stage k has the first k steps' counts summed, the
    probes map each thought to its own step and index, and equal counts reproduce c_thought exactly."""
    lm = model()
    t = tokenize_example(lm.tokenizer, Example("Tom is a cat", ["1 2", "3", "4 5 6"], "7"))
    per = cfg(c_thought=2, max_latent_stage=3, thoughts_per_step=[1, 3], probe_tokens=[0, -1, 0])
    assert [build_stage_sample(t, k, per, lm.latent_ids).num_latent for k in range(5)] == [0, 1, 4, 6, 6]
    assert [per.thought_slot(q) for q in range(6)] == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert coconut_eval_thoughts(per, 2) == 4 and coconut_eval_thoughts(per, 9) == 6
    steps = t.steps
    assert build_stage_sample(t, 3, per, lm.latent_ids).probe == [steps[0][0], steps[1][0], steps[1][-1],
                                                                   steps[1][0], steps[2][0], steps[2][-1]]
    same = cfg(c_thought=2, max_latent_stage=3, thoughts_per_step=[2, 2, 2], probe_tokens=[0, -1])
    plain = cfg(c_thought=2, max_latent_stage=3, probe_tokens=[0, -1])
    for k in range(5):
        assert build_stage_sample(t, k, same, lm.latent_ids) == build_stage_sample(t, k, plain, lm.latent_ids)
    with pytest.raises(ConfigError, match="thoughts_per_step entries"):
        cfg(thoughts_per_step=[2, 0])


def test_stage_zero_is_the_cot_sft_sequence_and_prompt_hook_tokenizes_to_start():
    lm = model()
    tok = lm.tokenizer
    for ex in EXAMPLES:
        s = build_stage_sample(tokenize_example(tok, ex), 0, cfg(), lm.latent_ids)
        prompt = tok(format_prompt(ex), add_special_tokens=False)["input_ids"]
        cot = tok(format_cot(ex), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert s.input_ids == prompt + [lm.latent_ids.start, lm.latent_ids.end] + cot
        hooked = tok(coconut_prompt_text(ex), add_special_tokens=False)["input_ids"]
        assert hooked == prompt + [lm.latent_ids.start]
        assert coconut_prompt_text({"prompt": format_prompt(ex)}) == coconut_prompt_text(ex)


def test_collate_aligns_the_first_thought_of_every_row():
    lm = model()
    samples = batch_samples(lm)
    b = collate_coconut(samples, lm.tokenizer.pad_token_id)
    L = lm.latent_ids.latent
    for i, s in enumerate(samples):
        row = b.input_ids[i]
        real = b.attention_mask[i].bool()
        assert row[real].tolist() == s.input_ids
        assert b.position_ids[i][real].tolist() == list(range(len(s.input_ids)))
        lat_cols = (row == L).nonzero().flatten().tolist()
        assert lat_cols == list(range(b.latent_start, b.latent_start + s.num_latent))
        assert b.labels[i][real].tolist() == s.labels
        assert (b.labels[i][~real] == IGNORE_INDEX).all()
    assert (b.latent_mask == (b.input_ids == L)).all()


def test_uniform_prob_mixing_is_seeded():
    lm = model()
    toks = [tokenize_example(lm.tokenizer, ex) for ex in EXAMPLES] * 40
    mixed = cfg(uniform_prob=0.5, seed=3)
    a = [s.stage for s in stage_samples(toks, 2, mixed, lm.latent_ids, epoch=1)]
    b = [s.stage for s in stage_samples(toks, 2, mixed, lm.latent_ids, epoch=1)]
    c = [s.stage for s in stage_samples(toks, 2, mixed, lm.latent_ids, epoch=2)]
    assert a == b and a != c
    changed = sum(st != 2 for st in a) / len(a)
    assert 0.15 < changed < 0.6  # half are redrawn, and a redraw lands on 2 again with prob 1/3 or 1/4
    assert set(a) <= {0, 1, 2, 3}
    # the draws follow the reference rule: with prob p a uniform stage in 0..#steps
    rng = random.Random(3 * 1_000_003 + 1)
    expect = [rng.randrange(len(t.steps) + 1) if rng.random() < 0.5 else 2 for t in toks]
    assert a == expect
    plain = [s.stage for s in stage_samples(toks, 2, cfg(), lm.latent_ids, epoch=1)]
    assert plain == [2] * len(toks)


# ------------------------------------------------------------------------------------------- schedule and training
def tiny_train_data(n=8):
    return [Example(f"{i} {i + 1}", [f"{i + 1}", f"{i + 2} {i}"], f"{(i * 3) % 10}") for i in range(n)]


@pytest.mark.parametrize("reset, expected_resets", [("stage", [0, 4, 8]), ("epoch", [0, 2, 4, 6, 8, 10]),
                                                    ("never", [0])])
def test_stage_schedule_and_optimizer_reset(reset, expected_resets, monkeypatch):
    import latentrl.sft.loop as engine

    made = []
    real = engine.make_adamw
    monkeypatch.setattr(engine, "make_adamw", lambda p, c, **kw: made.append(1) or real(p, c, **kw))
    lm = model()
    c_ = cfg(max_latent_stage=2, epochs_per_stage=2, num_epochs=8, start_stage=1, reset_optimizer=reset,
             per_device_train_batch_size=4, eval_strategy="no", learning_rate=1e-3, logging_steps=1)
    assert c_.start_epoch == 2 and [stage_of_epoch(c_, e) for e in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    hist = train_coconut(c_, lm, tiny_train_data(8))
    assert hist.stages == [1, 1, 2, 2, 3, 3]  # epochs 2..7; stage 3 > max_latent_stage drops every step
    assert hist.steps == 12  # 6 epochs x 2 steps of 4 examples
    assert hist.optimizer_resets == expected_resets and len(made) == len(expected_resets)
    assert [r["stage"] for r in hist.train] == [1] * 4 + [2] * 4 + [3] * 4
    assert all(r["forwards_per_step"] == r["stage"] + 1 if r["stage"] <= 2 else 3 for r in hist.train)


def test_optimizer_state_is_fresh_after_a_stage_reset(monkeypatch):
    import latentrl.sft.loop as engine

    seen = []
    real = engine.make_adamw

    def spy(p, c, **kw):
        opt = real(p, c, **kw)
        seen.append(opt)
        return opt

    monkeypatch.setattr(engine, "make_adamw", spy)
    c_ = cfg(max_latent_stage=1, epochs_per_stage=1, num_epochs=2, per_device_train_batch_size=8,
             eval_strategy="no")
    train_coconut(c_, model(), tiny_train_data(8))
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert all(st["step"] == 1 for st in seen[1].state.values())  # one step since the reset, not two


def test_gradient_accumulation_and_bptt_choice(monkeypatch):
    """per_device 2 x GA 2 gives the same weights as per_device 4 (token mean over the whole step)."""
    params = []
    for mb, ga in [(4, 1), (2, 2)]:
        lm = model(seed=1)
        c_ = cfg(max_latent_stage=2, epochs_per_stage=1, num_epochs=3, start_stage=1, eval_strategy="no",
                 per_device_train_batch_size=mb, gradient_accumulation_steps=ga, learning_rate=1e-3)
        train_coconut(c_, lm, tiny_train_data(4))
        params.append(torch.cat([p.detach().flatten() for p in lm.parameters()]))
    torch.testing.assert_close(params[0], params[1], atol=2e-5, rtol=1e-4)  # Adam magnifies rounding near 0
    lm = model(seed=1)
    c_ = cfg(max_latent_stage=2, epochs_per_stage=1, num_epochs=3, start_stage=1, eval_strategy="no",
             per_device_train_batch_size=4, learning_rate=1e-3, bptt=False)
    train_coconut(c_, lm, tiny_train_data(4))
    assert not torch.allclose(torch.cat([p.detach().flatten() for p in lm.parameters()]), params[0])


def test_train_coconut_learns_logs_and_evaluates_per_stage(tmp_path):
    from latentrl.logger import read_metrics

    lm = model()
    data = tiny_train_data(4)
    c_ = cfg(max_latent_stage=1, epochs_per_stage=3, num_epochs=6, per_device_train_batch_size=4, learning_rate=3e-3,
             logging_steps=1, output_dir=str(tmp_path), eval_batch_size=4)
    hist = train_coconut(c_, lm, data, data[:2])
    losses = [r["loss"] for r in hist.train]
    assert losses[2] < losses[0] and losses[5] < losses[3]
    assert [(r["stage"], r["epoch"]) for r in hist.eval] == [(0, 2), (1, 5)]  # after each stage; the last = final
    assert hist.final_eval is not None and hist.final_eval["num_thoughts"] == [1]
    assert hist.final_eval["mean_latent_positions"] == 1.0
    logged = read_metrics(tmp_path)
    assert any("eval/pass_at_1" in r for r in logged) and any("eval/loss" in r for r in logged)


@pytest.mark.parametrize("threshold, reason, per_stage", [(0.0, "converged", 2), (1.5, "max_steps", 3)])
def test_converged_stage_advance_follows_the_gate_and_logs_each_stage(tmp_path, threshold, reason, per_stage):
    """Threshold 0 passes every gate eval (patience 2 -> 2 steps per stage); 1.5 never does (step cap 3)."""
    from latentrl.logger import read_metrics

    lm = model()
    data = tiny_train_data(8)
    c_ = cfg(max_latent_stage=2, start_stage=1, stage_advance="converged", final_stage=3, gate_threshold=threshold,
             gate_patience=2, gate_eval_steps=1, max_steps_per_stage=3, per_device_train_batch_size=4,
             eval_strategy="no", output_dir=str(tmp_path), logging_steps=1)
    hist = train_coconut(c_, lm, data, gate_examples=data[:4])
    assert [r["stage/index"] for r in hist.stage_log] == [1, 2, 3]
    assert [r["stage/steps"] for r in hist.stage_log] == [per_stage] * 3
    assert {r["stage/reason"] for r in hist.stage_log} == {reason}
    assert hist.steps == 3 * per_stage and hist.optimizer_resets == [0, per_stage, 2 * per_stage]
    assert [r["stage"] for r in hist.train] == [1] * per_stage + [2] * per_stage + [3] * per_stage
    assert len(hist.gate) == 3 * per_stage and all(0.0 <= r["gate/next_step_accuracy"] <= 1.0 for r in hist.gate)
    logged = read_metrics(tmp_path)
    assert [r["stage/reason"] for r in logged if "stage/reason" in r] == [reason] * 3


def test_the_final_stage_takes_its_own_step_cap(tmp_path):
    """final_stage_max_steps caps the last stage only (a gate that never passes: every stage runs to its cap)."""
    c_ = cfg(max_latent_stage=2, start_stage=1, stage_advance="converged", final_stage=3, gate_threshold=1.5,
             gate_eval_steps=1, max_steps_per_stage=2, final_stage_max_steps=5, per_device_train_batch_size=4,
             eval_strategy="no", output_dir=str(tmp_path), logging_steps=1)
    hist = train_coconut(c_, model(), tiny_train_data(8), gate_examples=tiny_train_data(8)[:4])
    assert [(r["stage/index"], r["stage/steps"], r["stage/reason"]) for r in hist.stage_log] == [
        (1, 2, "max_steps"), (2, 2, "max_steps"), (3, 5, "max_steps")]
    assert [c_.stage_max_steps(s) for s in (1, 2, 3)] == [2, 2, 5]
    with pytest.raises(ConfigError, match="min_steps_per_stage .* exceeds final_stage_max_steps"):
        cfg(stage_advance="converged", min_steps_per_stage=10, max_steps_per_stage=20, final_stage_max_steps=5)


def test_converged_mode_needs_gate_examples_and_checks_its_options(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="gate examples") as refused:
        train_coconut(cfg(stage_advance="converged", eval_strategy="no", output_dir=out), model(), tiny_train_data(4))
    # the refused run never took the folder: the corrected one trains into it at once, even while the error's
    # traceback (and so the failed call's frame) is still alive, as in a notebook
    train_coconut(cfg(max_latent_stage=1, epochs_per_stage=1, num_epochs=1, eval_strategy="no", output_dir=out),
                  model(), tiny_train_data(4))
    assert refused.traceback
    with pytest.raises(ConfigError, match="final_stage"):
        cfg(stage_advance="converged", start_stage=2, final_stage=1)
    with pytest.raises(ConfigError, match="min_steps_per_stage"):
        cfg(stage_advance="converged", min_steps_per_stage=10, max_steps_per_stage=5)


def test_converged_mode_reaches_the_final_stage_by_learning(tmp_path):
    """A tiny model that can learn a 2-step task: every stage passes its gate before the cap."""
    lm = model(hidden=32)
    data = [Example(f"{i}", [f"{i}", f"{i}"], f"{i}") for i in range(1, 5)]
    c_ = cfg(max_latent_stage=2, start_stage=1, stage_advance="converged", final_stage=2, gate_threshold=1.0,
             gate_patience=2, gate_eval_steps=5, max_steps_per_stage=300, per_device_train_batch_size=4,
             learning_rate=1e-2, eval_strategy="no", eval_batch_size=4)
    hist = train_coconut(c_, lm, data, data)
    assert [r["stage/reason"] for r in hist.stage_log] == ["converged", "converged"]
    assert hist.final_eval is not None and hist.final_eval["pass_at_1"] == 1.0
    assert hist.final_eval["num_thoughts"] == [2]


def flat_weights(lm) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in lm.model.parameters()])


# 8 examples in batches of 2 = 4 steps per pass; each run is killed during step `stop` + 1. fixed: epochs 2..6 (20
# steps), resumed from step 10 = in the middle of epoch 4; converged: 3 stages that each pass their gate after 6
# steps (3 evaluations, patience 3), resumed from step 10 = in stage 2 with a streak of 2, at the start of a pass
# over the data; both with uniform_prob draws and a linear probe head
RESUME_CASES = {
    "fixed": dict(epochs_per_stage=2, num_epochs=7, stop=11, save_steps=5),
    "converged": dict(stage_advance="converged", final_stage=3, gate_threshold=0.0, gate_patience=3,
                      gate_eval_steps=2, max_steps_per_stage=50, stop=11, save_steps=5),
    # both checkpoints fall on steps that end a stage (6, 12): saved when the next stage starts, after the stage's
    # record and evaluation, so the resumed log has each evaluation once
    "converged_stage_ends": dict(stage_advance="converged", final_stage=3, gate_threshold=0.0, gate_patience=3,
                                 gate_eval_steps=2, max_steps_per_stage=50, stop=13, save_steps=6,
                                 eval_strategy="stage"),
    # LoRA: the checkpoints hold the adapter and the latent rows; the base comes from the model being resumed
    "fixed_lora": dict(epochs_per_stage=2, num_epochs=7, stop=11, save_steps=5,
                       lora=LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"])),
}


@pytest.mark.parametrize("mode", sorted(RESUME_CASES))
def test_a_resumed_run_trains_exactly_as_the_uninterrupted_one(tmp_path, mode, killed_in_step):
    import latentrl.optimizer_steps as engine  # the optimizer step that is killed
    from latentrl.checkpoint import list_checkpoints
    from latentrl.logger import read_metrics

    case = dict(RESUME_CASES[mode])
    stop, save_steps = case.pop("stop"), case.pop("save_steps")
    data = tiny_train_data(8)
    opts = {**dict(max_latent_stage=2, start_stage=1, per_device_train_batch_size=2, eval_strategy="no",
                   logging_steps=3, learning_rate=1e-3, uniform_prob=0.3, probe_head_tokens=[[-1]], seed=3,
                   eval_batch_size=4), **case}
    gate = dict(gate_examples=data[:4]) if mode.startswith("converged") else {}
    if opts["eval_strategy"] != "no":
        gate["eval_examples"] = data[4:]

    whole = model()
    hist_a = train_coconut(cfg(output_dir=str(tmp_path / "a"), **opts), whole, data, **gate)
    # the same run killed during step stop + 1, then resumed into a model built from another seed: everything it
    # trains with must come from the checkpoint
    with killed_in_step(engine, stop + 1):
        train_coconut(cfg(output_dir=str(tmp_path / "b"), save_steps=save_steps, **opts), model(), data, **gate)
    saved = [int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path / "b")]
    assert saved == [save_steps * (stop // save_steps - 1), save_steps * (stop // save_steps)]  # save_total_limit 2
    resumed = model(seed=0 if "lora" in case else 1)
    hist_b = train_coconut(cfg(output_dir=str(tmp_path / "b"), save_steps=save_steps, resume_from_checkpoint="latest",
                               **opts), resumed, data, **gate)

    assert hist_b.steps == hist_a.steps > stop
    assert torch.equal(flat_weights(resumed), flat_weights(whole))
    for key in ("stages", "optimizer_resets", "stage_log"):
        assert getattr(hist_b, key) == getattr(hist_a, key), key
    assert [r["loss"] for r in hist_b.train] == [r["loss"] for r in hist_a.train]
    assert [r["gate/streak"] for r in hist_b.gate] == [r["gate/streak"] for r in hist_a.gate]
    # the log of the resumed run: the lines up to the checkpoint, then the continuation, no line twice
    def lines(run):
        return [{k: v for k, v in r.items() if "wall" not in k} for r in read_metrics(tmp_path / run)]

    assert lines("b") == lines("a")


def test_a_checkpoint_from_the_old_coconut_loop_is_a_clear_error(tmp_path):
    """Checkpoints written before Coconut ran on the shared engine hold no data order: resuming one says so."""
    from latentrl.checkpoint import COMPLETE_MARKER, EXTRA_STATE_FILE, list_checkpoints

    opts = dict(max_latent_stage=1, epochs_per_stage=1, num_epochs=2, per_device_train_batch_size=2,
                eval_strategy="no", output_dir=str(tmp_path), save_steps=2)
    train_coconut(cfg(**opts), model(), tiny_train_data(8))
    latest = list_checkpoints(tmp_path)[-1]
    state = torch.load(latest / EXTRA_STATE_FILE, weights_only=True)
    del state["order"]  # what the old loop saved instead: the generator at the start of the pass, a batch count
    torch.save({**state, "epoch_order_state": torch.Generator().get_state(), "batch": 1}, latest / EXTRA_STATE_FILE)
    marker = json.loads((latest / COMPLETE_MARKER).read_text())  # as that loop wrote it: sizes, no checksums
    marker["files"][EXTRA_STATE_FILE] = (latest / EXTRA_STATE_FILE).stat().st_size
    del marker["crc32"]
    (latest / COMPLETE_MARKER).write_text(json.dumps(marker))
    with pytest.raises(ConfigError, match="older latentrl"):
        train_coconut(cfg(**opts, resume_from_checkpoint="latest"), model(), tiny_train_data(8))


def test_a_time_boxed_run_leaves_a_checkpoint_to_continue_from(tmp_path):
    """max_steps stops the run in the middle of a pass, off the save_steps grid: its last step is saved anyway, and
    continuing it with no time box gives the uninterrupted run's weights."""
    from latentrl.checkpoint import list_checkpoints

    data = tiny_train_data(8)
    opts = dict(max_latent_stage=2, start_stage=1, per_device_train_batch_size=2, eval_strategy="no",
                epochs_per_stage=2, num_epochs=5, learning_rate=1e-3, save_steps=5)
    whole = model()
    train_coconut(cfg(output_dir=str(tmp_path / "a"), **opts), whole, data)
    train_coconut(cfg(output_dir=str(tmp_path / "b"), max_steps=7, **opts), model(), data)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["checkpoint-5", "checkpoint-7"]
    resumed = model(seed=1)
    train_coconut(cfg(output_dir=str(tmp_path / "b"), resume_from_checkpoint="latest", **opts), resumed, data)
    assert torch.equal(flat_weights(resumed), flat_weights(whole))


def test_lora_trains_the_adapter_and_the_latent_rows_only(tmp_path):
    lm = model()
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    c_ = cfg(max_latent_stage=2, start_stage=1, epochs_per_stage=1, num_epochs=3, per_device_train_batch_size=4,
             eval_strategy="no", learning_rate=1e-2, lora=LoraConfig(enabled=True, r=4, target_modules=["q_proj"]))
    train_coconut(c_, lm, tiny_train_data(8))
    assert lm.is_peft
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    base = lm.model.get_base_model().state_dict()
    frozen = [k for k in before if "q_proj" not in k and "embed_tokens" not in k and "lm_head" not in k]
    assert frozen and all(torch.equal(before[k], base[k]) for k in frozen)  # every other weight is untouched
    ids = [lm.latent_ids.start, lm.latent_ids.latent, lm.latent_ids.end]
    trained = lm.embed(torch.tensor([ids]))[0].detach()
    assert not torch.equal(trained, before["model.embed_tokens.weight"][ids])  # the latent rows trained
    lm.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights():
    losses = {}
    for mp in ("no", "bf16"):
        lm = model()
        c_ = cfg(max_latent_stage=2, start_stage=1, epochs_per_stage=1, num_epochs=2, per_device_train_batch_size=4,
                 eval_strategy="no", logging_steps=1, mixed_precision=mp)
        losses[mp] = [r["loss"] for r in train_coconut(c_, lm, tiny_train_data(8)).train]
        assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert losses["bf16"] != losses["no"]  # bf16 rounding shows in every loss...
    assert losses["bf16"] == pytest.approx(losses["no"], rel=2e-2)  # ...and nothing else differs


def test_resume_needs_an_output_dir_and_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="save_steps=2 needs an output_dir"):
        train_coconut(cfg(save_steps=2), model(), tiny_train_data(4))
    with pytest.raises(ConfigError, match="set only one of them"):
        cfg(output_dir=str(tmp_path), resume_from_checkpoint="latest", overwrite_output_dir=True)
    with pytest.raises(FileNotFoundError, match="no intact checkpoint"):
        train_coconut(cfg(output_dir=str(tmp_path), resume_from_checkpoint="latest"), model(), tiny_train_data(4))


@pytest.mark.parametrize("next_steps", [1, 2])
def test_gate_metrics_equal_a_naive_per_row_computation(next_steps):
    """next_step_loss / next_step_accuracy against the HF model's own outputs, row by row (stage 1: the first
    segment is step 2; stage 3 > #steps of row 2: the answer); with gate_next_steps=2 the segment runs on through
    the following step (or the answer)."""
    from latentrl.sft.coconut import coconut_gate_metrics

    lm = model()
    toks = [tokenize_example(lm.tokenizer, ex) for ex in EXAMPLES]
    for stage in (1, 3):
        c_ = cfg(eval_batch_size=2, gate_next_steps=next_steps)
        got = coconut_gate_metrics(lm, toks, stage, c_, lm.latent_ids, lm.tokenizer.pad_token_id)
        seg_loss, exact = 0.0, 0
        for t in toks:
            s = build_stage_sample(t, stage, c_, lm.latent_ids)
            n_skip = min(stage, len(t.steps))
            seg = t.steps[n_skip] if n_skip < len(t.steps) else t.answer
            if next_steps == 2 and n_skip < len(t.steps):
                seg = seg + (t.steps[n_skip + 1] if n_skip + 1 < len(t.steps) else t.answer)
            first = s.labels.index(next(x for x in s.labels if x != IGNORE_INDEX))
            with torch.no_grad():
                logits, _ = hf_forward(lm, naive_row_inputs(lm, s))
            pred = logits[0, first - 1 : first - 1 + len(seg)]
            gold = torch.tensor(seg)
            assert s.input_ids[first : first + len(seg)] == seg
            seg_loss += float(F.cross_entropy(pred, gold, reduction="sum"))
            exact += int((pred.argmax(-1) == gold).all())
        assert got["next_step_loss"] == pytest.approx(seg_loss / len(toks), rel=1e-5)
        assert got["next_step_accuracy"] == exact / len(toks)
        with torch.no_grad():
            ref = naive_loss(lm, [build_stage_sample(t, stage, c_, lm.latent_ids) for t in toks])
        assert got["loss"] == pytest.approx(float(ref), rel=1e-5)


def test_build_coconut_init_caches_a_trained_checkpoint(tmp_path, monkeypatch):
    """The bench's `coconut_sft` init: shipped CoT model -> Coconut SFT with the CPU preset -> cached folder."""
    from types import SimpleNamespace

    import latentrl.assets
    from latentrl.data import task_vocabulary
    from latentrl.inits import build_coconut_init
    from latentrl.model import LatentModel

    cot = tmp_path / "shipped-cot"
    tiny_latent_model("qwen2", task_vocabulary("chain_sum")).save_pretrained(cot)
    monkeypatch.setattr(latentrl.inits, "model_path", lambda name: cot)
    task = SimpleNamespace(cot_model="x-cot", dataset="chain_sum", dataset_kwargs={"length": 3}, eval_source="unused")
    out = build_coconut_init(task, tmp_path / "cache", quick=True,
                             overrides=["num_train_examples=8", "per_device_train_batch_size=4"])
    assert out.name == "coconut_sft-quick" and (out / "config.json").is_file()
    info = json.loads((out / "coconut_sft.json").read_text())
    assert info["steps"] == 14 and info["stages"] == [1, 2, 3, 4, 5, 6, 7]  # epochs 1..7, 2 steps each
    loaded = LatentModel.from_pretrained(out)
    assert loaded.latent_ids is not None
    assert build_coconut_init(task, tmp_path / "cache", quick=True) == out  # cached: not rebuilt


def test_config_errors_name_the_fields():
    with pytest.raises(ConfigError, match="start_stage"):
        CoconutConfig(start_stage=5, epochs_per_stage=2, num_epochs=10)
    with pytest.raises(ConfigError, match="reset_optimizer"):
        CoconutConfig(reset_optimizer="sometimes")
    with pytest.raises(ConfigError, match="uniform_prob"):
        CoconutConfig(uniform_prob=1.5)


def test_model_without_latent_tokens_is_a_clear_error():
    lm = tiny_latent_model("qwen2", WORDS, add_latent_tokens=False)
    with pytest.raises(ValueError, match="latent tokens"):
        train_coconut(cfg(), lm, tiny_train_data(2))


# ------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_batched_generation_equals_one_prompt_at_a_time(arch):
    lm = model(arch, seed=2)
    data = EXAMPLES + [Example("Tom is a dog", ["1"], "2")]
    n = [3, 0, 2, 1]
    ro = coconut_rollout(lm, data, n, max_new_positions=10)
    assert ro.num_latent.tolist() == n
    end = lm.latent_ids.end
    for i in range(len(data)):
        single = coconut_rollout(lm, data[i : i + 1], n[i], max_new_positions=10)
        C = int(single.lengths[0])
        assert ro.completion_ids[i, :C].tolist() == single.completion_ids[0, :C].tolist()
        assert int(ro.lengths[i]) == C
        assert ro.completion_ids[i, n[i]] == end and ro.forced_mask[i, n[i]]  # <|end-latent|> forced after them
    batched = coconut_generate(lm, data, n, max_new_positions=10, batch_size=4)
    one_by_one = [coconut_generate(lm, [ex], [k], max_new_positions=10)[0] for ex, k in zip(data, n)]
    assert batched == one_by_one
    assert coconut_generate(lm, data, 2, max_new_positions=10, batch_size=3) == [
        coconut_generate(lm, [ex], 2, max_new_positions=10)[0] for ex in data
    ]


def test_generation_through_evaluate_matches_coconut_generate():
    from latentrl.eval import evaluate
    from latentrl.sft.coconut import coconut_operator, coconut_schedule

    lm = model(seed=2)
    res = evaluate(lm, EXAMPLES, operator=coconut_operator(lm), schedule=coconut_schedule(lm, 2),
                   max_new_positions=10, num_samples_to_keep=3, prompt_text=coconut_prompt_text)
    texts = coconut_generate(lm, EXAMPLES, 2, max_new_positions=10)
    assert [s["completion"] for s in res.samples] == texts
    assert res.mean_latent_positions == 2.0


# ------------------------------------------------------------------------------------------- presets
def test_presets_load():
    paper = load_config(CoconutConfig, REPO / "configs" / "coconut_gpt2_gsm8k.yaml")
    assert (paper.c_thought, paper.max_latent_stage, paper.epochs_per_stage, paper.num_epochs) == (2, 3, 3, 25)
    assert paper.start_epoch == 3 and paper.learning_rate == 1e-4 and paper.bptt
    assert paper.per_device_train_batch_size * paper.gradient_accumulation_steps == 128
    cpu = load_config(CoconutConfig, REPO / "configs" / "cpu" / "coconut_sft.yaml", ["seed=3"])
    assert cpu.seed == 3 and cpu.max_latent_stage * cpu.c_thought == 4


# ------------------------------------------------------------------------------------------- the loaders Coconut reads
class _Ids:
    def __init__(self, tok):
        self.start, self.latent, self.end = tok.convert_tokens_to_ids(["<|start-latent|>", "<|latent|>",
                                                                        "<|end-latent|>"])


def word_tokenizer_for(examples):
    """A word tokenizer covering `examples` and the latent tokens (whitespace-separated words, so exact)."""
    from latentrl.tokenizer import build_word_tokenizer

    words = sorted({w for ex in examples for w in (format_prompt(ex) + format_cot(ex)).split()})
    tok = build_word_tokenizer(words + ["<|start-latent|>", "<|latent|>", "<|end-latent|>"])
    return tok, _Ids(tok)


def check_curriculum(examples, c, max_stage):
    """Every example at every stage: thoughts = c*min(k, max) and the target = the steps left + answer."""
    tok, ids = word_tokenizer_for(examples)
    conf = cfg(c_thought=c, max_latent_stage=max_stage)
    for ex in examples:
        t = tokenize_example(tok, ex)
        assert [tok.decode(s) for s in t.steps] == [" ".join(s.split()) for s in ex.steps]
        for stage in range(max_stage + 2):
            s = build_stage_sample(t, stage, conf, ids)
            assert s.num_latent == c * min(stage, max_stage)
            kept = ex.steps[min(stage, len(ex.steps)) if stage <= max_stage else len(ex.steps):]
            target = [i for i, lab in zip(s.input_ids, s.labels) if lab != IGNORE_INDEX]
            assert target[-1] == tok.eos_token_id
            assert tok.decode(target[:-1]).split() == " ".join(kept + ["####", ex.answer]).split()
            assert s.input_ids[: len(t.prompt)] == tok(format_prompt(ex), add_special_tokens=False)["input_ids"]


def test_real_prosqa_builds_every_stage():
    examples = load_prosqa(shared_file("prosqa/valid.json"))
    assert len(examples) == 300
    assert max(len(ex.steps) for ex in examples) <= 6  # c=1 and max_latent_stage=6 (paper) cover every chain
    check_curriculum(examples[:50], c=1, max_stage=6)


def test_prontoqa_fixture_curriculum_and_malformed_rows_name_file_and_item(tmp_path):
    examples = load_prontoqa(FIXTURES / "prontoqa_small.json")
    assert [len(ex.steps) for ex in examples] == [3, 3, 2]
    check_curriculum(examples, c=1, max_stage=6)
    rows = json.loads((FIXTURES / "prontoqa_small.json").read_text())
    del rows[1]["steps"]
    bad = tmp_path / "prontoqa_bad.json"
    bad.write_text(json.dumps(rows))
    with pytest.raises(DataFormatError, match=r"prontoqa_bad\.json, item 1 \(0-based\): missing field 'steps'"):
        load_prontoqa(bad)
    rows[1]["steps"] = 7
    bad.write_text(json.dumps(rows))
    with pytest.raises(DataFormatError, match=r"prontoqa_bad\.json, item 1 .*'steps' must be a list of strings"):
        load_prontoqa(bad)


def test_real_gsm8k_aug_curriculum_and_malformed_line(tmp_path):
    path = shared_file("gsm8k_aug/valid.txt")
    examples = load_icot(path)
    assert len(examples) == 500
    check_curriculum(examples[:50], c=2, max_stage=3)  # the paper's GSM8k setting
    lines = path.read_text(encoding="utf-8").splitlines()
    broken = tmp_path / "gsm_bad.txt"
    broken.write_text("\n".join(lines[:3] + [lines[3].replace("####", "")] + lines[4:6]) + "\n")
    with pytest.raises(DataFormatError, match=r"gsm_bad\.txt, line 4: '####'"):
        load_icot(broken)


def test_thought_probe_targets_and_loss_equal_a_naive_computation():
    """probe_tokens=[-1] (c=1): thought q's output is trained to predict the last token of step q."""
    lm = model()
    c_ = cfg(probe_tokens=[-1], eval_batch_size=4)
    toks = [tokenize_example(lm.tokenizer, ex) for ex in EXAMPLES]
    samples = [build_stage_sample(t, s, c_, lm.latent_ids) for t, s in zip(toks, STAGES)]
    assert samples[0].probe == [toks[0].steps[0][-1], toks[0].steps[1][-1]] and samples[1].probe == []
    assert samples[2].probe == [t[-1] for t in toks[2].steps]
    out = coconut_forward(lm, collate_coconut(samples, lm.tokenizer.pad_token_id), probe_weight=0.5)
    plain = coconut_forward(lm, collate_coconut(samples, lm.tokenizer.pad_token_id))
    ce, n = 0.0, 0
    for s in samples:
        _, h = hf_forward(lm, naive_row_inputs(lm, s))
        for q, target in enumerate(s.probe):
            ce = ce + F.cross_entropy(lm.lm_head(h[0, s.latent_start + q])[None].float(), torch.tensor([target]))
            n += 1
    torch.testing.assert_close(torch.tensor(out.probe_loss), (ce / n).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, plain.loss + 0.5 * ce / n, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="probe_tokens"):
        cfg(probe_tokens=[-1, -2])


def test_probe_head_step_shift_moves_each_steps_probe_indices():
    """probe_head_step_shift[i] is added to every probe_head_tokens index of step i (missing entries: 0); indices
    that fall outside the step after the shift are skipped (IGNORE_INDEX), as unshifted ones are."""
    lm = model()
    toks = [tokenize_example(lm.tokenizer, ex) for ex in EXAMPLES]
    t = toks[2]  # three steps of two tokens each
    s0, s1, s2 = t.steps
    assert [len(x) for x in t.steps] == [2, 2, 2]
    plain = build_stage_sample(t, 9, cfg(c_thought=1, probe_head_tokens=[[0, 1]]), lm.latent_ids)
    shifted = build_stage_sample(t, 9, cfg(c_thought=1, probe_head_tokens=[[0, 1]], probe_head_step_shift=[1, -50]),
                                 lm.latent_ids)
    assert plain.probe_heads == [[s0[0], s0[1]], [s1[0], s1[1]], [s2[0], s2[1]]]
    assert shifted.probe_heads == [[s0[1], IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX], [s2[0], s2[1]]]


# ------------------------------------------------------------------------------------------- the thought projection
def test_thought_projection_forward_equals_a_naive_recompute_and_survives_save_and_load(tmp_path):
    """With a thought projection (CODI's MLP + LayerNorm) every thought is proj(last hidden state): the KV-cached
    multi-pass loss and gradients (the projection's included) equal a naive recompute on the HF model's own outputs
    that applies the projection by hand; a saved model gets it back, and its generation feeds the projected thought
    (an operator step equals proj of the hidden state, and a replay rebuilds the same input)."""
    from latentrl.thoughts.hidden_state import PROJECTION_NAME, ensure_thought_projection

    lm = model()
    proj = ensure_thought_projection(lm)
    torch.manual_seed(3)
    with torch.no_grad():  # not the identity-like init: a projection that changes the thoughts visibly
        for p in proj.parameters():
            p.add_(0.1 * torch.randn_like(p))
    samples = batch_samples(lm, c=2)
    out = coconut_forward(lm, collate_coconut(samples, lm.tokenizer.pad_token_id), bptt=True)
    out.loss.backward()
    g_kv = grads(lm)
    lm.zero_grad(set_to_none=True)

    total, count = 0.0, 0
    for s in samples:  # naive: full recomputes, the projection applied by hand to each thought
        ids = torch.tensor([s.input_ids])
        emb = lm.model.get_input_embeddings()(ids)[0]
        cols = [emb[i] for i in range(ids.shape[1])]
        for c in range(s.latent_start, s.latent_start + s.num_latent):
            _, h = hf_forward(lm, torch.stack(cols[:c])[None])
            cols[c] = proj.net(h[0, -1])
        logits, _ = hf_forward(lm, torch.stack(cols)[None])
        labels = torch.tensor(s.labels[1:])
        sel = labels != IGNORE_INDEX
        total = total + F.cross_entropy(logits[0, :-1][sel].float(), labels[sel], reduction="sum")
        count += int(sel.sum())
    ref = total / count
    ref.backward()
    g_ref = grads(lm)
    torch.testing.assert_close(out.loss.detach(), ref.detach(), atol=1e-5, rtol=1e-5)
    assert any(n.startswith("side_modules." + PROJECTION_NAME) for n in g_ref)  # the projection trains
    for name in g_ref:
        torch.testing.assert_close(g_kv[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)

    lm.save_pretrained(tmp_path / "m")
    from latentrl.model import LatentModel
    from latentrl.sft.coconut import coconut_operator

    back = LatentModel.from_pretrained(tmp_path / "m")
    assert PROJECTION_NAME not in back.side_modules
    op = coconut_operator(back)  # attaches the saved projection
    assert PROJECTION_NAME in back.side_modules
    h = torch.randn(3, back.hidden_size)
    step = op.step(back, None, h)
    with torch.no_grad():
        torch.testing.assert_close(step.embeds, proj.net(h))
        torch.testing.assert_close(op.rebuild(back, step.token_ids, step.payload), step.embeds)
    bare = model()  # a model trained without one feeds the raw hidden state, as Coconut
    torch.testing.assert_close(coconut_operator(bare).step(bare, None, h).embeds, h)
    with pytest.raises(ConfigError, match="thought_projection needs bptt"):
        cfg(thought_projection=True, bptt=False)


def test_training_data_without_reasoning_steps_is_warned_about(tmp_path):
    from latentrl.data.schema import Example

    rows = [Example(e.question, [], e.answer) for e in tiny_train_data(4)]
    with pytest.warns(UserWarning, match="none of the 4 training examples has reasoning steps"):
        train_coconut(cfg(max_latent_stage=1, epochs_per_stage=1, num_epochs=1, per_device_train_batch_size=2,
                          eval_strategy="no"), model(), rows)
