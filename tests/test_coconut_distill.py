"""Coconut's hidden-state distillation (`distill_weight`, CODI-style): the column pairs predict the same tokens, and
the loss and its gradients equal a naive recompute on the HF models' own `hidden_states`, with and without BPTT."""

from __future__ import annotations

import pytest
import torch

from latentrl.config import ConfigError
from latentrl.sft.coconut import build_stage_sample, coconut_forward, collate_coconut, tokenize_example, train_coconut
from latentrl.testing import tiny_latent_model
from tests.test_coconut import EXAMPLES, STAGES, cfg, grads, model, naive_row_inputs


def distill_samples(lm, c=1):
    c_ = cfg(c_thought=c, distill_weight=1.0, distill_teacher="unused-here")
    toks = [tokenize_example(lm.tokenizer, ex) for ex in EXAMPLES]
    return toks, [build_stage_sample(t, s, c_, lm.latent_ids) for t, s in zip(toks, STAGES)]


def teacher_model(arch="qwen2", **shape):
    return tiny_latent_model(arch, ["Tom", "is", "a", "cat", "dog"], seed=7, add_latent_tokens=False, **shape)


def test_pairs_predict_the_same_tokens_in_student_and_teacher():
    lm = model()
    toks, samples = distill_samples(lm, c=2)
    batch = collate_coconut(samples, lm.tokenizer.pad_token_id)
    d = batch.distill
    assert d is not None
    for i, (t, s) in enumerate(zip(toks, samples)):
        assert s.teacher_ids == t.prompt + sum(t.steps, []) + t.answer  # the CoT-SFT sequence
        n = s.tail_len
        assert n == len(sum(t.steps[STAGES[i]:], [])) + len(t.answer) and int(d.valid[i].sum()) == n
        for j in range(n):
            sc, tc = int(d.student_cols[i, j]), int(d.teacher_cols[i, j])
            assert batch.input_ids[i, sc + 1] == d.teacher_ids[i, tc + 1]  # both columns predict tail token j
            assert batch.labels[i, sc + 1] == batch.input_ids[i, sc + 1]  # ... a token the student is trained on
        first = int(d.student_cols[i, 0])
        assert batch.input_ids[i, first] == lm.latent_ids.end  # the first pair reads the thoughts: <|end-latent|>
    plain = collate_coconut([build_stage_sample(t, s, cfg(c_thought=2), lm.latent_ids) for t, s in zip(toks, STAGES)],
                            lm.tokenizer.pad_token_id)
    assert plain.distill is None  # off by default: no teacher rows are built


def naive_distill(lm, teacher, samples, detach_thoughts):
    """Row by row: the student's states after every layer from the HF model's own `hidden_states` over the row with
    its thoughts formed by full recomputes; the teacher's from its own forward over `teacher_ids`. Pairs are found
    by searching for <|end-latent|>, not from the library's index."""
    s_states, t_states = [], []
    for s in samples:
        out = lm.model(inputs_embeds=naive_row_inputs(lm, s, detach_thoughts), output_hidden_states=True)
        t_out = teacher.model(input_ids=torch.tensor([s.teacher_ids]), output_hidden_states=True)
        e = s.input_ids.index(lm.latent_ids.end)
        tail = len(s.input_ids) - e - 1
        t0 = len(s.teacher_ids) - tail - 1
        s_states.append([h[0, e : e + tail] for h in out.hidden_states[1:]])
        t_states.append([h[0, t0 : t0 + tail] for h in t_out.hidden_states[1:]])
    total = 0.0
    layers = len(s_states[0])
    for layer in range(layers):
        st = torch.cat([r[layer] for r in s_states])
        tt = torch.cat([r[layer] for r in t_states]).detach()
        total = total + ((st - tt) / tt.std()).pow(2).mean()
    return total / layers


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@pytest.mark.parametrize("bptt", [True, False])
def test_distill_loss_and_gradients_equal_a_naive_recompute(arch, bptt):
    lm, teacher = model(arch), teacher_model(arch)
    teacher.model.eval()
    _, samples = distill_samples(lm, c=2)
    batch = collate_coconut(samples, lm.tokenizer.pad_token_id)
    plain = coconut_forward(lm, batch, bptt=bptt)
    out = coconut_forward(lm, batch, bptt=bptt, teacher=teacher, distill_weight=0.5)
    out.loss.backward()
    g = grads(lm)
    lm.zero_grad(set_to_none=True)
    ref = naive_distill(lm, teacher, samples, detach_thoughts=not bptt)
    torch.testing.assert_close(torch.tensor(out.distill_loss), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss.detach(), plain.loss.detach() + 0.5 * ref.detach(), atol=1e-5, rtol=1e-5)
    (0.5 * ref).backward()
    g_ref = grads(lm)
    plain = coconut_forward(lm, batch, bptt=bptt)  # add the cross-entropy's gradient to the reference
    plain.loss.backward()
    g_both = grads(lm)
    for name, value in g.items():
        torch.testing.assert_close(value, g_both[name], atol=2e-5, rtol=1e-4, msg=name)
    assert any(v.abs().sum() > 0 for v in g_ref.values())
    assert not any(p.grad is not None for p in teacher.model.parameters())  # the teacher stays frozen


def test_distillation_needs_a_teacher_of_the_same_shape(tmp_path):
    with pytest.raises(ConfigError, match="distill_teacher"):
        cfg(distill_weight=1.0)
    lm = model()
    _, samples = distill_samples(lm)
    batch = collate_coconut(samples, lm.tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="same depth"):
        coconut_forward(lm, batch, teacher=teacher_model(layers=3), distill_weight=1.0)
    with pytest.raises(ValueError, match="same width"):
        coconut_forward(lm, batch, teacher=teacher_model(hidden=16), distill_weight=1.0)


def test_train_coconut_with_a_teacher_logs_the_distillation_loss(tmp_path):
    lm, teacher = model(), teacher_model()
    teacher.save_pretrained(tmp_path / "teacher")
    c_ = cfg(c_thought=1, distill_weight=1.0, distill_teacher=str(tmp_path / "teacher"), num_epochs=2,
             epochs_per_stage=1, max_latent_stage=1, eval_strategy="no", logging_steps=1,
             per_device_train_batch_size=2)
    history = train_coconut(c_, lm, EXAMPLES * 2)
    logged = [r["distill_loss"] for r in history.train if "distill_loss" in r]
    assert len(logged) == len(history.train) and all(v > 0 for v in logged)


def test_a_teacher_with_another_vocabulary_or_shape_is_refused(tmp_path):
    from latentrl.sft.coconut.distill import load_teacher

    lm = model()
    tiny_latent_model("qwen2", ["Tom", "is", "a", "bird"], seed=1, add_latent_tokens=False).save_pretrained(
        tmp_path / "words")
    with pytest.raises(ConfigError, match="another vocabulary"):
        load_teacher(str(tmp_path / "words"), lm)
    teacher_model(layers=3).save_pretrained(tmp_path / "deep")
    with pytest.raises(ConfigError, match="hidden size and depth"):
        load_teacher(str(tmp_path / "deep"), lm)
    teacher_model().save_pretrained(tmp_path / "ok")
    assert not any(p.requires_grad for p in load_teacher(str(tmp_path / "ok"), lm).model.parameters())

