"""Rewards: answer extraction, normalisation, TRL-signature reward functions and the batch scorer."""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import pytest
import torch

from latentrl.data import format_cot, make_examples
from latentrl.rewards import (
    REWARD_FUNCS,
    RewardFunctionError,
    answers_match,
    compute_rewards,
    correctness_reward,
    extract_answer,
    format_reward,
    get_reward_funcs,
    hrpo_reward,
    math_verify_reward,
    normalize_answer,
)

# --- extraction ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (" << 3 + 5 = 8 >> #### 8", "8"),
        (" 1 2 #### 5 5   6 0 ", "5 5 6 0"),
        ("#### 1 #### 2", "1"),  # the FIRST marker is the commitment: a later right answer does not rescue it
        ("#### 42 <eos> #### 7 <pad> <pad>", "42"),
        ("#### 42<eos><pad><pad>", "42"),
        ("#### 42<|im_end|>", "42"),
        ("#### 18\nQuestion: next problem", "18"),  # the answer is the rest of its line
        ("#### 18\nQuestion: next #### ", "18"),  # the first marker counts
        ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{x^{2}+1}", "x^{2}+1"),  # last boxed, balanced braces
        ("\\boxed{3} and \\boxed{unclosed", "3"),
        ("#### \\boxed{7}", "\\boxed{7}"),
        ("no answer here", None),
        ("####", None),
        ("#### <eos>", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_from_conversational_completion():
    assert extract_answer([{"role": "assistant", "content": "<< 1 + 1 = 2 >> #### 2"}]) == "2"


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("  Tom  is a lempus . ", "Tom is a lempus"),
        ("1,234,567", "1234567"),
        ("$\\boxed{12}$", "12"),
        ("\\boxed{ 3.5 }.", "3.5"),
        ("5 5 6 0", "5 5 6 0"),
        ("(1, 2)", "(1, 2)"),
    ],
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_answers_match_rules():
    assert answers_match("42.0", "42") and answers_match("1,000", "1000") and answers_match("$18", "18")
    assert answers_match("Tom is a lempus", "Tom is a lempus .")
    assert not answers_match("43", "42") and not answers_match(None, "42")
    assert answers_match("5 5 6 0", "5  5 6 0")
    assert not answers_match("5 5 6 0 0", "5 5 6 0")  # iCoT digit sequences: exact, no numeric reading
    assert not answers_match("0 5", "5")


# --- reward functions ----------------------------------------------------------------------------------------------


def test_correctness_reward():
    completions = [" << 3 + 5 = 8 >> #### 8", " #### 9", "\\boxed{8}", "garbage", " #### 8 #### 8"]
    assert correctness_reward(["p"] * 5, completions, answer=["8"] * 5) == [1.0, 0.0, 1.0, 0.0, 1.0]
    # GSM8K-style gold answers are reduced to their final answer
    assert correctness_reward(["p"], ["#### 72"], answer=["48 + 24 = 72\n#### 72"]) == [1.0]


def test_correctness_on_generated_completions():
    for task in ("icot_mult", "chain_sum", "prosqa_like"):
        examples = make_examples(task, 10, seed=2)
        completions = [format_cot(ex) + " <eos>" for ex in examples]
        answers = [ex.answer for ex in examples]
        assert correctness_reward([""] * 10, completions, answer=answers) == [1.0] * 10
        assert correctness_reward([""] * 10, completions[1:] + completions[:1], answer=answers).count(1.0) < 10


def test_format_reward():
    completions = [" a #### 5", " a #### ", " #### 1 #### 1", "\\boxed{5}", " #### 5 <eos>", ""]
    assert format_reward([""] * 6, completions) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_hrpo_reward_needs_exactly_one_marker_and_a_correct_answer():
    completions = [" #### 8", " #### 8 #### 8", " #### 7", "\\boxed{8}", " x #### 8.0"]
    assert hrpo_reward([""] * 5, completions, answer=["8"] * 5) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_math_verify_reward():
    completions = [
        "so \\boxed{\\frac{1}{2}}",
        " #### 0.5",
        " #### 1/2",
        " #### 0.6",
        "}}}{{\\boxed{ $$ \\frac{",  # garbage must give 0.0, not an exception
        "",
    ]
    assert math_verify_reward([""] * 6, completions, answer=["\\frac{1}{2}"] * 6) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert math_verify_reward([""], [" #### 1,000"], answer=["1000"]) == [1.0]
    # iCoT digit sequences and non-math answers fall back to exact matching
    assert math_verify_reward([""] * 2, [" #### 5 5 6 0", " #### 9 9 6 0"], answer=["5 5 6 0"] * 2) == [1.0, 0.0]
    assert math_verify_reward([""], [" #### Tom is a lempus ."], answer=["Tom is a lempus."]) == [1.0]


@pytest.mark.parametrize("gold, written, right", [
    ("1", "x^2 + 1", False),  # math_verify's default extraction would take the last number, 1
    ("2", "\\sqrt{2} + 2", False),
    ("5", "3, 5", False),
    ("x^2+1", "x^2 + 1", True),  # and would find no formula where these are one
    ("(3, 5)", "(3,5)", True),
    ("18.90", "\\$18.90", True),
    ("1000", "\\boxed{1,000}", True),
    ("0.5", "\\frac{1}{2}", True),
    ("10", "10 dollars", True),  # prose keeps the default extraction
    ("True", "True", True),
])
def test_math_verify_reward_reads_an_extracted_answer_as_one_formula(gold, written, right):
    assert math_verify_reward([""], [f"#### {written}"], [gold]) == [float(right)]


MATRIX = "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"


@pytest.mark.parametrize("completion, gold, right", [
    ("#### 7 hours, not 9", "9", False),  # hedged prose: the default extraction would take the last number
    ("#### 3 or 5", "5", False),
    ("#### 12 (Note: 15 would be wrong)", "15", False),
    ("Answer: 3 or 5", "5", False),
    ("\\boxed{3 \\text{ or } 5}", "5", False),
    ("#### 2 3", "5", False),  # two numbers, not their sum
    ("#### 100 200", "300", False),
    ("\\boxed{\\begin{pmatrix} 5 \\\\ 2 \\end{pmatrix}}", MATRIX, False),  # a matrix is not its last entry
    ("#### 2", MATRIX, False),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", MATRIX, True),
    ("#### 18 dollars", "18", True),  # one number in prose, symbols around one number, units with exponents
    ("#### 1/2 cup", "\\frac{1}{2}", True),
    ("\\boxed{10\\text{ cm}^2}", "10", True),
    ("#### $1,234.00", "1234", True),
])
def test_math_verify_reward_does_not_reward_listing_candidates_or_reading_a_matrix_as_a_number(completion, gold,
                                                                                                right):
    assert math_verify_reward([""], [completion], answer=[gold]) == [float(right)]


@pytest.mark.parametrize("completion, gold", [
    ("**Answer:** 5", "5"), ("#### **5**", "5"), ("\\boxed {5}", "5"), ("#### -$5", "-5"),
    ("\\boxed{1\\,000}", "1000"), ("#### \u22125", "-5"),
])
def test_common_answer_forms_of_instruct_models_are_read_by_both_checks(completion, gold):
    """Markdown bold, a space before the box's brace, a minus before the currency sign, LaTeX's thin-space thousands
    separator, a Unicode minus: right under `correctness` and `math_verify`, and still wrong against another gold."""
    assert correctness_reward([""], [completion], answer=[gold]) == [1.0]
    assert math_verify_reward([""], [completion], answer=[gold]) == [1.0]
    wrong = "7" if gold != "7" else "8"
    assert correctness_reward([""], [completion], answer=[wrong]) == [0.0]
    assert math_verify_reward([""], [completion], answer=[wrong]) == [0.0]


def test_a_markdown_heading_is_not_the_answer_mark():
    """Instruct models write `#### Step 1` headings and `##### Solution`: the box after them is the answer."""
    assert extract_answer("#### Step 1: Add the numbers\n2+3=5\n#### Step 2\nSo \\boxed{5}") == "5"
    assert extract_answer("##### Solution\nSo \\boxed{5}") == "5"
    assert extract_answer("#### Tom is a lempus .") == "Tom is a lempus ."  # a word answer with no box stays
    assert format_reward([""], ["##### Solution\n#### 5"]) == [1.0]
    assert hrpo_reward([""], ["##### Solution\n#### 5"], answer=["5"]) == [1.0]


def test_math_verify_reward_works_off_the_main_thread():
    result = []
    thread = threading.Thread(
        target=lambda: result.append(math_verify_reward([""], ["\\boxed{\\frac{2}{4}}"], answer=["0.5"]))
    )
    thread.start()
    thread.join()
    assert result == [[1.0]]


def test_registry():
    assert set(REWARD_FUNCS) == {"correctness", "format", "hrpo", "math_verify"}
    assert get_reward_funcs(["hrpo", "format"]) == [hrpo_reward, format_reward]
    with pytest.raises(ValueError, match="unknown reward.*'nope'.*correctness, format, hrpo, math_verify"):
        get_reward_funcs(["format", "nope"])


# --- compute_rewards -------------------------------------------------------------------------------------------------

PROMPTS = ["a ||", "b ||", "c ||"]
COMPLETIONS = [" #### 1", " #### 2", " x"]
COLUMNS = {"answer": ["1", "3", "5"]}


def test_compute_rewards_weights_and_shapes():
    per_func, total = compute_rewards(
        [correctness_reward, format_reward], PROMPTS, COMPLETIONS, COLUMNS, weights=[2.0, 0.5]
    )
    assert per_func.dtype == torch.float32 and per_func.shape == (3, 2)
    assert per_func.tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    assert total.tolist() == [2.5, 0.5, 0.0]
    _, unweighted = compute_rewards([correctness_reward, format_reward], PROMPTS, COMPLETIONS, COLUMNS)
    assert unweighted.tolist() == [2.0, 1.0, 0.0]


def test_compute_rewards_none_is_nan_and_skipped_in_total():
    def only_first(prompts, completions, **kw):
        return [0.25, None, np.float32(0.5)]

    per_func, total = compute_rewards([only_first, format_reward], PROMPTS, COMPLETIONS, COLUMNS, [1.0, 1.0])
    assert math.isnan(per_func[1, 0]) and per_func[2, 0].item() == 0.5
    assert total.tolist() == [1.25, 1.0, 0.5]


def test_compute_rewards_all_none_row_raises_with_names():
    def sometimes_none(prompts, completions, **kw):
        return [1.0, None, 1.0]

    def never_scores(prompts, completions, **kw):
        return [None] * len(completions)

    with pytest.raises(RewardFunctionError, match=r"sometimes_none, never_scores.*indices \[1\]"):
        compute_rewards([sometimes_none, never_scores], PROMPTS, COMPLETIONS, COLUMNS)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, np.float32("nan"), torch.tensor(math.inf)],
                         ids=["inf", "-inf", "nan", "np_nan", "tensor_inf"])
def test_non_finite_reward_names_function_row_prompt_and_value(bad):
    """An inf used to surface as a diverged loss and a NaN as "returned None": both are the reward function's."""
    def length_ratio(prompts, completions, **kw):
        return [1.0, bad, 0.0]

    long_prompt = "b " * 50 + "||"
    with pytest.raises(RewardFunctionError) as info:
        compute_rewards([format_reward, length_ratio], ["a ||", long_prompt, "c ||"], COMPLETIONS, COLUMNS)
    msg = str(info.value)
    value = float(bad)
    assert f"'length_ratio' returned {value} at row 1 of the batch" in msg
    assert "prompt 'b b b" in msg and "...'" in msg and len(msg) < 400  # an excerpt, not the whole prompt
    assert "completion '#### 2'" in msg and "None" not in msg.split(";")[0]


def test_non_finite_reward_stops_training_with_the_reward_error(tmp_path):
    from latentrl.config import GRPOConfig
    from latentrl.data import make_examples, task_vocabulary
    from latentrl.rl.trainer import GRPOTrainer
    from latentrl.testing import tiny_latent_model

    def blows_up(prompts, completions, **kw):
        return [math.inf if i == 5 else 1.0 for i in range(len(completions))]

    cfg = GRPOConfig(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                     num_generations=4, max_completion_length=8, report_to=["none"])
    t = GRPOTrainer(cfg, tiny_latent_model("qwen2", task_vocabulary("chain_sum"), hidden=32),
                    make_examples("chain_sum", 8, seed=0, length=3), reward_funcs=[blows_up])
    with pytest.raises(RewardFunctionError, match=r"'blows_up' returned inf at row 5 of the batch \(prompt '"):
        t.train()
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written: the run never started


def test_compute_rewards_wraps_raising_function():
    def exploding_reward(prompts, completions, **kw):
        raise KeyError("answer_column")

    with pytest.raises(RewardFunctionError, match=r"'exploding_reward' raised KeyError: 'answer_column'") as info:
        compute_rewards([format_reward, exploding_reward], PROMPTS, COMPLETIONS, COLUMNS)
    assert isinstance(info.value.__cause__, KeyError)
    # a missing dataset column shows up the same way, naming the function
    with pytest.raises(RewardFunctionError, match=r"'correctness_reward' raised TypeError.*answer"):
        compute_rewards([correctness_reward], PROMPTS, COMPLETIONS, {})


def test_compute_rewards_rejects_bad_return_values():
    def too_short(prompts, completions, **kw):
        return [1.0]

    def wordy(prompts, completions, **kw):
        return [1.0, "yes", 0.0]

    def not_a_list(prompts, completions, **kw):
        return 1.0

    with pytest.raises(RewardFunctionError, match=r"'too_short' returned 1 rewards for 3 completions"):
        compute_rewards([too_short], PROMPTS, COMPLETIONS, COLUMNS)
    with pytest.raises(RewardFunctionError, match=r"'wordy' returned a bad reward at index 1: 'yes'"):
        compute_rewards([wordy], PROMPTS, COMPLETIONS, COLUMNS)
    with pytest.raises(RewardFunctionError, match=r"'not_a_list' must return a list"):
        compute_rewards([not_a_list], PROMPTS, COMPLETIONS, COLUMNS)
    partial = functools.partial(wordy)
    with pytest.raises(RewardFunctionError, match="'wordy'"):
        compute_rewards([partial], PROMPTS, COMPLETIONS, COLUMNS)


def test_compute_rewards_checks_batch_shapes():
    with pytest.raises(ValueError, match="2 weights for 1 reward functions"):
        compute_rewards([format_reward], PROMPTS, COMPLETIONS, COLUMNS, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 3 completions"):
        compute_rewards([format_reward], PROMPTS, COMPLETIONS, {"answer": ["1", "2"]})
    with pytest.raises(ValueError, match="2 completions for 3 prompts"):
        compute_rewards([format_reward], PROMPTS, COMPLETIONS[:2], COLUMNS)


def test_math_verify_reward_reads_every_answer_form_of_the_math_datasets():
    completions = ["so $x = \\boxed{\\dfrac{3}{4}}$", "Step 1...\nAnswer: 16", "#### 14", "Answer: 17"]
    golds = ["\\frac{3}{4}", "16", "14", "16"]
    assert math_verify_reward([""] * 4, completions, answer=golds) == [1.0, 1.0, 1.0, 0.0]
    assert extract_answer("The answer is 3.\n**Answer: 5**") == "5"
    assert extract_answer("no final line") is None


def test_a_wrong_answer_followed_by_the_right_one_is_wrong():
    from latentrl.rewards import correctness_reward

    assert correctness_reward(["p"] * 3, ["#### 3 #### 5", "#### 5 #### 3", "#### 5"], answer=["5"] * 3) == [0.0, 1.0, 1.0]


def test_reward_metric_names_are_distinct():
    from latentrl.rewards import reward_metric_names

    def accuracy(prompts, completions, **kw):
        return [1.0] * len(completions)

    funcs = [lambda p, c, **k: c, lambda p, c, **k: c, accuracy, functools.partial(accuracy)]
    assert reward_metric_names(funcs) == ["<lambda>", "<lambda>_2", "accuracy", "accuracy_2"]


def test_trls_extra_reward_arguments_reach_the_functions_that_take_them(tmp_path):
    """`completion_ids` and `trainer_state` (TRL passes both) reach a function that names them or takes
    **kwargs; a function without them is called as before."""
    from latentrl.config import GRPOConfig
    from latentrl.data import make_examples
    from latentrl.data.schema import as_rows
    from latentrl.rl.trainer import GRPOTrainer
    from latentrl.testing import tiny_chain_sum_model

    seen = {}

    def named(prompts, completions, completion_ids, trainer_state, **kw):
        seen["ids"], seen["state"] = completion_ids, trainer_state
        return [0.0] * len(completions)

    def through_kwargs(prompts, completions, **kw):
        seen["kw"] = sorted(kw)
        return [1.0] * len(completions)

    def plain(prompts, completions, answer):
        return [0.5] * len(completions)

    cfg = GRPOConfig(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                     num_generations=2, max_completion_length=5, save_steps=0, report_to=["none"])
    rows = [{"prompt": r["prompt"], "answer": r["answer"]}
            for r in as_rows(make_examples("chain_sum", 8, seed=0, length=3))]
    t = GRPOTrainer(cfg, tiny_chain_sum_model(), rows, reward_funcs=[named, through_kwargs, plain])
    t.train()
    assert len(seen["ids"]) == 4 and all(isinstance(i, int) for row in seen["ids"] for i in row)
    assert all(1 <= len(row) <= 5 for row in seen["ids"])
    assert (seen["state"].global_step, seen["state"].max_steps) == (0, 1)
    assert seen["kw"] == ["answer", "completion_ids", "trainer_state"]
