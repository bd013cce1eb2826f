"""prompt_format=chat: the dataset prompt becomes the user turn of the tokenizer's chat template (with an optional
system turn and the assistant turn opened); the method's prompt suffix follows the template; clear errors."""

import pytest

from latentrl.chat import chat_prompt, prompt_formatter
from latentrl.config import ConfigError, GRPOConfig
from latentrl.data import make_examples, task_vocabulary
from latentrl.methods import get_method
from latentrl.rl.trainer import GRPOTrainer
from latentrl.testing import tiny_latent_model

TEMPLATE = ("{% for m in messages %}{{ m.role }} : {{ m.content }} || {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")
WORDS = [*task_vocabulary("chain_sum"), "system", "user", "assistant", "be", "brief"]


def chat_model(template=TEMPLATE):
    lm = tiny_latent_model("qwen2", WORDS, seed=0, hidden=32)
    lm.tokenizer.chat_template = template
    return lm


def config(tmp_path, **kw):
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                num_generations=2, max_completion_length=6, save_steps=0, report_to=["none"], prompt_format="chat")
    base.update(kw)
    return GRPOConfig(**base)


def test_chat_prompt_renders_the_template_by_hand():
    tok = chat_model().tokenizer
    assert chat_prompt(tok, "1 2 ||") == "user : 1 2 || || assistant : "
    assert chat_prompt(tok, "1 2 ||", "be brief .") == "system : be brief . || user : 1 2 || || assistant : "


def test_trainer_feeds_chat_prompts_and_keeps_the_method_suffix_after_the_template(tmp_path):
    rows = [{"prompt": "3 4 ||", "answer": "7"}]
    t = GRPOTrainer(config(tmp_path, system_prompt="be brief ."), chat_model(), rows * 4, reward_funcs=["correctness"])
    assert t.prompt_text(rows[0]) == "system : be brief . || user : 3 4 || || assistant : "
    ids, mask = t._tokenize_prompts(rows)
    expected = t.model.tokenizer("system : be brief . || user : 3 4 || || assistant :", add_special_tokens=False)
    assert ids[0].tolist() == expected["input_ids"] and t.model.tokenizer.unk_token_id not in expected["input_ids"]
    seen, fmt = [], t.prompt_text
    t.parts.prompt_text = lambda row: seen.append(fmt(row)) or seen[-1]
    t.evaluate(rows, k=0)  # evaluation goes through the same prompt format
    assert seen == [fmt(rows[0])]
    assert t.train_step()["completions/mean_length"] > 0

    coconut = get_method("coconut_grpo")
    t = GRPOTrainer(config(tmp_path / "c", method="coconut_grpo", latent={"operator": "hidden_state",
                                                                          "num_latent_steps": 2}),
                    chat_model(), rows * 4, reward_funcs=["correctness"], method=coconut)
    assert t.prompt_text(rows[0]) == "user : 3 4 || || assistant : <|start-latent|>"
    assert t.model.tokenizer(t.prompt_text(rows[0]), add_special_tokens=False)["input_ids"][-1] == \
        t.model.latent_ids.start


def test_chat_format_gives_an_examples_bare_question_and_a_trl_prompt_as_written():
    """The `||` end-of-question marker is the raw format's: under a chat template the user turn holds the question
    alone (an Example's row), while a TRL row's prompt is kept exactly as its dataset wrote it."""
    from latentrl.data import to_record

    tok = chat_model().tokenizer
    fmt = prompt_formatter(tok, "chat")
    ex = make_examples("chain_sum", 1, seed=0, length=3)[0]
    assert fmt(to_record(ex)) == f"user : {ex.question} || assistant : "
    assert fmt({"prompt": "3 4 ||", "answer": "7"}) == "user : 3 4 || || assistant : "
    assert prompt_formatter(tok, "raw")(to_record(ex)) == f"{ex.question} ||"


def test_raw_format_is_the_dataset_prompt(tmp_path):
    ex = make_examples("chain_sum", 4, seed=0, length=3)
    t = GRPOTrainer(config(tmp_path, prompt_format="raw"), chat_model(), ex, reward_funcs=["correctness"])
    row = {"prompt": "3 4 ||"}
    assert t.prompt_text(row) == "3 4 ||"


def test_missing_chat_template_and_stray_system_prompt_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="chat template"):
        GRPOTrainer(config(tmp_path), chat_model(template=None), [{"prompt": "1 ||"}] * 4,
                    reward_funcs=["correctness"])
    with pytest.raises(ConfigError, match="system_prompt"):
        config(tmp_path, prompt_format="raw", system_prompt="be brief .")
    with pytest.raises(ConfigError, match="prompt_format"):
        config(tmp_path, prompt_format="chatml")
    with pytest.raises(ConfigError, match="prompt_format"):
        prompt_formatter(chat_model().tokenizer, "chatml")


def test_evaluate_and_the_swap_check_render_chat_message_prompts_as_training_does():
    """`evaluate` (and `thought_dependence`) take the trainer's conversational rows: the messages go through the
    chat template, so the model sees the same text as when it trained on them."""
    import latentrl.eval as ev
    from latentrl.rewards import RewardFunctionError

    lm = chat_model()
    rows = [{"prompt": [{"role": "user", "content": "1 + 2"}], "answer": "3"},
            {"prompt": [{"role": "user", "content": "2 + 2"}], "answer": "4"}]
    seen = []
    res = ev.evaluate(lm, rows, max_new_positions=3,
                      reward_func=lambda prompts, completions, **kw: seen.extend(prompts) or [0.0] * len(completions))
    assert res.n == 2 and seen == [r["prompt"] for r in rows]
    rendered = prompt_formatter(lm.tokenizer, "raw")(rows[0])
    assert rendered == "user : 1 + 2 || assistant : "
    with pytest.raises(RewardFunctionError, match="returned 5 rewards for 2 completions"):
        ev.evaluate(lm, rows, max_new_positions=3, reward_func=lambda prompts, completions, **kw: [1.0] * 5)
    with pytest.raises(ValueError, match="k must be >= 0"):
        ev.evaluate(lm, rows, k=-1)
    with pytest.raises(ValueError, match="the evaluation data is empty"):
        ev.evaluate(lm, [])


def test_chat_messages_without_a_template_name_the_fix_that_applies():
    """prompt_format does not apply to message prompts, so the error does not suggest prompt_format=raw."""
    lm = chat_model(template=None)
    fmt = prompt_formatter(lm.tokenizer, "raw")
    with pytest.raises(ConfigError, match="chat messages needs a tokenizer with a chat template") as err:
        fmt({"prompt": [{"role": "user", "content": "1 + 2"}]})
    assert "prompt_format=raw" not in str(err.value)
