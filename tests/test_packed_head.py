"""The prepacked LM head (`latentrl.packed_head`): the same logits as the head itself, used only where it applies,
repacked whenever the weight changes, and rollouts that replay to their own log-probs with it on."""

import copy

import pytest
import torch

from latentrl import packed_head, sampling
from latentrl.packed_head import PackedHead
from latentrl.replay import replay
from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout
from latentrl.testing import tiny_latent_model
from latentrl.thoughts import build_thought_operator
from tests.conftest import WORDS, gen, make_prompts

pytestmark = pytest.mark.skipif(not packed_head._ops_available(), reason="this PyTorch build has no oneDNN linear ops")


@pytest.fixture
def small_chunks(monkeypatch):
    """Heads of any size are packed (HRPO's fused step walks chunks of 8 rows in blocks of 4 at H = 16)."""
    from latentrl.methods.hrpo import fused_step

    monkeypatch.setattr(packed_head, "MIN_VOCAB", 4)
    monkeypatch.setattr(sampling, "BLOCK", 4)
    monkeypatch.setattr(fused_step, "CHUNK_BYTES", 8 * 16 * 4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 32])
def test_packed_logits_equal_the_heads_own(small_chunks, bias, rows):
    """head(x) from the whole packed weight and from its packed chunks (HRPO's layout, joined), for 2-D and 3-D
    inputs; a batch other than the one packed for works too."""
    head = torch.nn.Linear(16, 150, bias=bias)
    packed = PackedHead()
    x = torch.randn(rows, 16, generator=gen(1))
    x3 = torch.randn(2, 3, 16, generator=gen(2))
    with torch.no_grad():
        assert packed.applies(head, x)
        torch.testing.assert_close(packed(head, x), head(x), atol=1e-6, rtol=1e-6)
        assert packed.rows == 150 and len(packed._packed) == 1  # the whole weight, one copy
        torch.testing.assert_close(packed(head, x3), head(x3), atol=1e-6, rtol=1e-6)
        assert len(packed.chunks(head, 8, rows)) == 19 and packed.rows == 8  # 18 chunks of 8 rows and one of 6
        torch.testing.assert_close(packed(head, x), head(x), atol=1e-6, rtol=1e-6)
        assert len(packed._packed) == 19  # the chunks serve the whole logits too: still one copy
        torch.testing.assert_close(packed(head, x3), head(x3), atol=1e-6, rtol=1e-6)


def test_the_packed_head_applies_only_without_autograd_to_a_large_float32_linear_on_the_cpu(monkeypatch):
    head, x = torch.nn.Linear(16, 40), torch.randn(3, 16)
    packed = PackedHead()
    monkeypatch.setattr(packed_head, "MIN_VOCAB", 41)
    with torch.no_grad():
        assert not packed.applies(head, x)  # fewer rows than MIN_VOCAB
    monkeypatch.setattr(packed_head, "MIN_VOCAB", 40)
    assert not packed.applies(head, x)  # autograd on: training takes the head itself
    with torch.no_grad():
        assert packed.applies(head, x)
        assert not packed.applies(head.to(torch.bfloat16), x.to(torch.bfloat16))
        assert not packed.applies(torch.nn.Sequential(torch.nn.Linear(16, 40)), x)  # not a plain Linear
        monkeypatch.setattr(packed_head, "ENABLED", False)
        assert not packed.applies(torch.nn.Linear(16, 40), x)


def test_the_packed_copy_follows_every_change_of_the_weight(small_chunks):
    """An optimizer step (in place: the weight's version moves) and a new weight tensor both repack; a change
    through `.data` (no version change) is caught by the per-rollout check; a deep copy of the model packs its own."""
    lm = tiny_latent_model("llama", WORDS)  # an untied head
    head = lm.model.get_output_embeddings()
    x = torch.randn(4, lm.hidden_size, generator=gen(3))
    with torch.no_grad():
        before = lm.decode_logits(x)
    torch.testing.assert_close(before, head(x).detach(), atol=1e-6, rtol=1e-6)
    opt = torch.optim.AdamW(lm.parameters(), lr=0.1)
    lm.lm_head(x).square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = lm.decode_logits(x)
        torch.testing.assert_close(after, head(x), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(after, before)
        head.weight = torch.nn.Parameter(head.weight * 2)
        torch.testing.assert_close(lm.decode_logits(x), head(x), atol=1e-6, rtol=1e-6)
        assert lm.packed_head._packed
        twin = copy.deepcopy(lm)
        assert not twin.packed_head._packed and lm.packed_head._packed
        torch.testing.assert_close(twin.decode_logits(x), head(x), atol=1e-6, rtol=1e-6)
        lm.check_packed_head()
        assert lm.packed_head._packed  # unchanged weight: the copy stays
        head.weight.data.mul_(0.5)  # as a broadcast between processes writes: no version change
        lm.check_packed_head()
        assert not lm.packed_head._packed
        torch.testing.assert_close(lm.decode_logits(x), head(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("mode", [None, "hrpo_gate", "gumbel_topk"])
def test_rollouts_with_the_packed_head_equal_those_without_and_replay_to_their_logprobs(monkeypatch, arch, mode):
    """Plain sampling, HRPO (its fused step reads the packed chunks) and Latent-GRPO's thought from the same seed:
    the same ids and log-probs with the packed head as with `torch.mm` on the weight, and the replay recomputes
    them. The tiny Qwen2 ties its head to the embedding, the tiny Llama does not."""
    from latentrl.methods.hrpo import fused_step
    from latentrl.methods.hrpo.operator import ensure_gate

    lm = tiny_latent_model(arch, WORDS)
    op = build_thought_operator(mode, temperature=0.7) if mode else None
    if mode == "hrpo_gate":
        ensure_gate(lm)
        monkeypatch.setattr(fused_step, "MIN_VOCAB", 4)
    ids, mask = make_prompts(lm)
    schedule = ThinkingSchedule(delimiter_ids=[10**6]) if mode else None
    params = SamplingParams(max_new_positions=8, temperature=0.7)
    monkeypatch.setattr(sampling, "BLOCK", 4)
    monkeypatch.setattr(fused_step, "CHUNK_BYTES", 8 * lm.hidden_size * 4)
    monkeypatch.setattr(packed_head, "ENABLED", False)
    plain = generate_rollout(lm, ids, mask, params, op, schedule, gen(4))
    monkeypatch.setattr(packed_head, "ENABLED", True)
    monkeypatch.setattr(packed_head, "MIN_VOCAB", 4)
    used = []
    real = PackedHead.chunk_logits
    monkeypatch.setattr(PackedHead, "chunk_logits", lambda self, *a: used.append(1) or real(self, *a))
    r = generate_rollout(lm, ids, mask, params, op, schedule, gen(4))
    assert used
    assert torch.equal(r.completion_ids, plain.completion_ids)
    m = r.completion_mask
    torch.testing.assert_close(r.logprobs[m], plain.logprobs[m], atol=1e-5, rtol=1e-5)
    out = replay(lm, op, r, temperature=0.7)
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)


def test_a_trainer_step_packs_the_head_for_its_rollouts_and_frees_it_before_the_update(tmp_path, monkeypatch):
    """HRPO's trainer at a 'large' vocabulary (MIN_VOCAB lowered): its rollouts use the packed head (the fused step
    and the whole logits), and the copy is freed once they are done, before the update changes the weights."""
    from latentrl.config import GRPOConfig, LatentConfig
    from latentrl.data import make_examples, task_vocabulary
    from latentrl.methods.hrpo import fused_step
    from latentrl.rl.trainer import GRPOTrainer
    from latentrl.testing import word_count_reward

    monkeypatch.setattr(packed_head, "MIN_VOCAB", 4)
    monkeypatch.setattr(fused_step, "MIN_VOCAB", 4)
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), hidden=32)
    cfg = GRPOConfig(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                     num_generations=4, max_completion_length=8, learning_rate=1e-2, save_steps=0,
                     report_to=["none"], method="hrpo", beta=0.005,
                     latent=LatentConfig(operator="hrpo_gate", answer_delimiter="####"))
    t = GRPOTrainer(cfg, lm, make_examples("chain_sum", 16, seed=0, length=3), reward_funcs=[word_count_reward])
    used = []
    real = PackedHead.chunk_logits
    monkeypatch.setattr(PackedHead, "chunk_logits", lambda self, *a: used.append(1) or real(self, *a))
    metrics = t.train_step()
    assert used and not lm.packed_head._packed
    assert torch.isfinite(torch.tensor(metrics["loss"]))
