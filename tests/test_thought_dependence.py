"""The thought-dependence check on a hand-built model whose answer provably does / does not depend on its thought.

The model: a 1-layer Qwen2 with orthonormal (tied) embeddings, zero query/key weights (so attention is uniform over
the prefix), identity value/output projections and no MLP. The prompt is 8 copies of a digit d, the answer is d.
Position p's final state is its input plus the mean of the RMS-normed inputs so far (norm 8 each):

* thought = the hidden state (Coconut; norm 8 along E[d]): the output at the thought is 8 E[t] + 7.1 E[d] + 0.9 E[t]
  for a thought along digit t, so the first answer token is the thought's digit: swapping thoughts between rows
  with different digits makes every answer wrong and every answer the donor's; a zero thought leaves 7.1 E[d], right.
* thought = the hidden state rescaled to norm 1: the output is E[t] + 7.1 E[d] + 0.9 E[t], so the answer is d
  whatever the thought: no drop at all.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from latentrl.model import LatentModel
from latentrl.rollout import ThinkingSchedule
from latentrl.thought_dependence import ThoughtIntervention, derangement, thought_dependence
from latentrl.thoughts.hidden_state import HiddenStateThought
from latentrl.tokenizer import build_word_tokenizer

DIGITS = [str(i) for i in range(10)]
H = 64


def hand_built_model() -> LatentModel:
    tok = build_word_tokenizer(DIGITS)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=H, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(H, H, generator=gen))
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(q[: len(tok)])  # orthonormal rows, tied to the LM head
        attn = model.model.layers[0].self_attn
        for lin in (attn.q_proj, attn.k_proj):
            lin.weight.zero_()
            lin.bias.zero_()
        attn.v_proj.weight.copy_(torch.eye(H))
        attn.v_proj.bias.zero_()
        attn.o_proj.weight.copy_(torch.eye(H))
        model.model.layers[0].mlp.down_proj.weight.zero_()
    return LatentModel(model, tok)


class UnitThought(HiddenStateThought):
    """The hidden state rescaled to norm 1: too small to outvote the prompt in this model."""

    def step(self, model, logits, hidden, *, generator=None):
        st = super().step(model, logits, hidden, generator=generator)
        st.embeds = st.embeds / st.embeds.norm(dim=-1, keepdim=True)
        return st


def first_token_reward(prompts, completions, answer, **kw):
    return [float(c.split()[:1] == [a]) for c, a in zip(completions, answer)]


ROWS = [{"prompt": " ".join([d] * 8), "answer": d} for d in DIGITS]  # 10 rows, all answers different


def check(operator, **kw):
    return thought_dependence(hand_built_model(), ROWS, operator=operator, schedule=ThinkingSchedule(num_latent_steps=1),
                              max_new_positions=2, reward_func=first_token_reward, **kw)


def test_a_model_that_reads_its_thought_fails_when_thoughts_are_swapped():
    res = check(HiddenStateThought(latent_token_id=0))
    assert res.pass_own == 1.0 and res.pass_swap == 0.0 and res.drop_swap == 1.0
    assert res.swap_donor_match == 1.0  # every swapped answer is the donor's
    assert res.pass_zero == 1.0 and res.drop_zero == 0.0  # no thought: the prompt decides
    assert res.n == 10 and res.mean_latent_positions == 1.0 and res.drop_swap_se == 0.0


def test_a_model_that_ignores_its_thought_shows_no_drop():
    res = check(UnitThought(latent_token_id=0))
    assert res.pass_own == res.pass_swap == res.pass_zero == 1.0
    assert res.drop_swap == 0.0 and res.drop_zero == 0.0 and res.swap_donor_match == 0.0


def test_batches_and_a_lone_last_row():
    res = check(HiddenStateThought(latent_token_id=0), batch_size=3)  # batches of 3, 3, 3 and a lone row
    assert res.n == 10 and res.pass_own == 1.0 and res.pass_swap == 0.0


def test_derangement_has_no_fixed_point_and_errors_are_clear():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 10):
        for _ in range(20):
            p = derangement(n, gen)
            assert sorted(p.tolist()) == list(range(n)) and not bool((p == torch.arange(n)).any())
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, gen)
    with pytest.raises(ValueError, match="at least 2 problems"):
        thought_dependence(hand_built_model(), ROWS[:1], operator=HiddenStateThought(),
                           schedule=ThinkingSchedule(num_latent_steps=1))
    with pytest.raises(ValueError, match="no latent positions"):
        thought_dependence(hand_built_model(), ROWS, operator=HiddenStateThought(), schedule=ThinkingSchedule())
    with pytest.raises(ValueError, match="swap needs"):
        ThoughtIntervention(HiddenStateThought(), "swap")


def test_the_swap_drop_is_over_rows_that_were_swapped_and_none_swapped_is_an_error():
    """A row without thoughts, or whose donor had none, keeps its own input: counting it as swapped diluted the drop
    (a batch where no row thought once reported drop 0, "ignores its thoughts")."""
    from latentrl.thought_dependence import NoThoughtsToSwap

    steps = torch.tensor([1, 0] * 5)
    res = thought_dependence(hand_built_model(), ROWS, operator=HiddenStateThought(latent_token_id=0),
                             schedule=ThinkingSchedule(num_latent_steps=steps), max_new_positions=2,
                             reward_func=first_token_reward)
    assert 0 < res.n_swapped < 5 and res.n == 10  # only thinking rows with a thinking donor
    assert res.pass_swap == 0.0 and res.drop_swap == 1.0 and res.swap_donor_match == 1.0
    assert res.pass_own == 1.0 and res.mean_latent_positions == 0.5
    with pytest.raises(NoThoughtsToSwap, match="no row of 10 and its donor both had latent steps"):  # one thinker
        thought_dependence(hand_built_model(), ROWS, operator=HiddenStateThought(latent_token_id=0),
                           schedule=ThinkingSchedule(num_latent_steps=torch.tensor([1] + [0] * 9)),
                           max_new_positions=2, reward_func=first_token_reward)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        check(HiddenStateThought(latent_token_id=0), batch_size=0)
