"""`latentrl.eval.evaluate`'s sampled figures against a hand-built case: Pass@k and the sampled Pass@1 (the mean
fraction of right samples per problem) with its standard error, and the per-problem values behind them."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from latentrl.eval import evaluate
from latentrl.testing import tiny_latent_model


def test_sampled_pass_at_1_is_the_mean_fraction_of_right_samples_per_problem():
    """Problem j ("q j") has exactly j of its k = 4 samples marked right by the reward (the first j it sees in a
    call), whatever the model writes: sampled Pass@1 = mean(j / 4) = 0.375 over j = 0..3, its SE the standard
    error of those four fractions, Pass@4 = 3 / 4 (problem 0 never right)."""
    lm = tiny_latent_model(words=["q", "0", "1", "2", "3"])
    rows = [{"prompt": f"q {j}", "answer": "x"} for j in range(4)]

    def first_j_right(prompts, completions, **kwargs):
        seen: Counter[str] = Counter()
        out = []
        for p in prompts:
            seen[p] += 1
            out.append(1.0 if seen[p] <= int(p.split()[-1]) else 0.0)
        return out

    res = evaluate(lm, rows, k=4, max_new_positions=3, reward_func=first_j_right, batch_size=8)
    fractions = [j / 4 for j in range(4)]
    mean = sum(fractions) / 4
    se = math.sqrt(sum((f - mean) ** 2 for f in fractions) / 3 / 4)
    assert res.pass_at_k == pytest.approx(0.75)
    assert res.sampled_pass_at_1 == pytest.approx(0.375) and res.sampled_pass_at_1_se == pytest.approx(se)
    assert res.to_dict()["sampled_pass_at_1"] == pytest.approx(0.375)
    # greedy Pass@1: one call over the 4 prompts, each seen once, so problems 1-3 are right
    assert res.pass_at_1 == pytest.approx(0.75)
    # the per-problem values behind both figures, in data order (kept out of the results dict)
    assert res.correct == [0.0, 1.0, 1.0, 1.0] and res.sampled_correct == pytest.approx(fractions)
    assert "correct" not in res.to_dict() and "sampled_correct" not in res.to_dict()
    none = evaluate(lm, rows, k=0, max_new_positions=3, reward_func=first_j_right)
    assert none.pass_at_k is None and none.sampled_pass_at_1 is None and none.sampled_pass_at_1_se is None
    assert none.correct == [0.0, 1.0, 1.0, 1.0] and none.sampled_correct is None


def test_prompts_the_model_cannot_read_as_written_are_warned_about():
    """Data of another task (words the tokenizer maps to its unknown token) and prompts that with the budget run
    past max_position_embeddings are scored, with a warning naming why the score may mean little."""
    import warnings

    from latentrl.model import LatentModel

    model = LatentModel.from_pretrained("chain_sum-cot")
    limit = model.model.config.max_position_embeddings
    with pytest.warns(UserWarning, match=r"1 of 2 prompts hold words the model's tokenizer does not know .*grass"):
        evaluate(model, [{"prompt": "1 + 2 =", "answer": "3"}, {"prompt": "John cuts his grass", "answer": "2"}],
                 k=0, max_new_positions=4)
    long = " ".join(["1 + 2"] * (limit // 3))
    with pytest.warns(UserWarning, match=rf"plus max_new_positions=8 passes the model's max_position_embeddings={limit}"):
        evaluate(model, [{"prompt": long, "answer": "3"}], k=0, max_new_positions=8)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(does not know|max_position_embeddings).*")
        evaluate(model, [{"prompt": "1 + 2 =", "answer": "3"}], k=0, max_new_positions=4)


def test_a_delimiter_recorded_at_a_latent_position_does_not_end_the_reasoning():
    """A soft operator records its top-1 token at a latent position; that id is not written text. Hand-built:
    ids [5, D, 7, D, 9] with positions 0-2 latent: the reasoning is 3 positions (the first written D at 3), not 1."""
    import torch

    from latentrl.eval import reasoning_positions
    from latentrl.rollout import Rollout

    D = 4
    ids = torch.tensor([[5, D, 7, D, 9]])
    lat = torch.tensor([[True, True, True, False, False]])
    ro = Rollout(prompt_ids=torch.zeros(1, 1, dtype=torch.long), prompt_mask=torch.ones(1, 1, dtype=torch.bool),
                 completion_ids=ids, completion_mask=torch.ones(1, 5, dtype=torch.bool), latent_mask=lat,
                 forced_mask=torch.zeros(1, 5, dtype=torch.bool), logprobs=torch.zeros(1, 5),
                 truncated=torch.zeros(1, dtype=torch.bool))
    assert reasoning_positions(ro, [D]).tolist() == [3]
    assert reasoning_positions(ro, [D], decoded_latent=True).tolist() == [1]  # decoded ids are the completion's text


def test_one_problem_has_no_standard_error_of_its_sampled_pass_and_batch_size_is_checked():
    model = tiny_latent_model("qwen2", ["1", "2", "+", "="], seed=0, hidden=16)
    res = evaluate(model, [{"prompt": "1 + 1 =", "answer": "2"}], k=2, max_new_positions=3)
    assert res.sampled_pass_at_1 is not None and res.sampled_pass_at_1_se is None  # not 0.0: nothing to estimate
    with pytest.raises(ValueError, match="batch_size must be >= 1, got -1"):
        evaluate(model, [{"prompt": "1 + 1 =", "answer": "2"}], k=0, batch_size=-1)


def test_a_trainer_warns_about_training_prompts_the_model_cannot_read():
    from latentrl.config import GRPOConfig
    from latentrl.model import LatentModel
    from latentrl.rl.trainer import GRPOTrainer

    cfg = GRPOConfig(model_name_or_path="chain_sum-cot", output_dir="/tmp/unused-warn", max_steps=1, save_steps=0,
                     report_to=["none"], per_device_train_batch_size=2, num_generations=2)
    rows = [{"prompt": "John cuts his grass", "answer": "2"}, {"prompt": "1 + 2 =", "answer": "3"}]
    with pytest.warns(UserWarning, match=r"1 of 2 prompts hold words the model's tokenizer does not know"):
        GRPOTrainer(cfg, LatentModel.from_pretrained("chain_sum-cot"), rows, reward_funcs=["correctness"])


def test_a_run_trained_on_math_verify_is_scored_by_math_verify(tmp_path, capsys):
    """Eval Pass@1 (the CLI, a trainer's eval metric, the thought-swap check) counts a right answer the way the run's
    rewards do: with `math_verify` among them, `17` is right for a gold `\\frac{34}{2}`; otherwise exact match."""
    import json

    from latentrl.bench import suite_tasks
    from latentrl.cli import main
    from latentrl.rewards import answer_check, correctness_reward, math_verify_reward

    assert answer_check(["math_verify", "format"]) is math_verify_reward
    assert answer_check([math_verify_reward]) is math_verify_reward
    assert answer_check(["hrpo", "format"]) is correctness_reward
    rows = [{"question": e.question, "answer": f"\\frac{{{2 * int(e.answer)}}}{{2}}"}
            for e in suite_tasks()["chain_sum"].eval_examples(8)]
    data = tmp_path / "fractions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = {}
    for check in ("correctness", "math_verify"):
        assert main(["eval", "--model", "chain_sum-cot", "--data", str(data), "--num", "8", "--k", "0",
                     f"reward_funcs=[{check}]"]) == 0
        captured = capsys.readouterr()
        out = json.loads(captured.out.strip().splitlines()[-1])
        assert out["answer_check"] == check and f"answers checked by {check}" in captured.err
        scores[check] = out["pass_at_1"]
    assert scores["correctness"] == 0.0 and scores["math_verify"] >= 0.5  # the shipped model: ~75 % on chain_sum


def test_eval_reads_trl_prompt_rows_with_an_answer_and_refuses_them_without(tmp_path, capsys):
    """`latentrl eval --data` takes the rows training takes (TRL's `prompt` column), scored against their `answer`
    column; rows without one are a one-line error, not a TypeError from the reward function."""
    import json

    from latentrl.bench import suite_tasks
    from latentrl.cli import main

    examples = suite_tasks()["chain_sum"].eval_examples(4)
    rows = [{"prompt": f"{e.question} ||", "answer": e.answer} for e in examples]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--model", "chain_sum-cot", "--data", str(tmp_path / "prompts.jsonl"), "--num", "4",
                 "--k", "0"]) == 0
    trl = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--model", "chain_sum-cot", "--data", "chain_sum", "--num", "4", "--k", "0"]) == 0
    assert trl["pass_at_1"] == json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pass_at_1"]
    (tmp_path / "no_answer.jsonl").write_text(json.dumps({"prompt": rows[0]["prompt"]}) + "\n")
    assert main(["eval", "--model", "chain_sum-cot", "--data", str(tmp_path / "no_answer.jsonl"), "--k", "0"]) == 2
    assert "row 0 has no 'answer' column (columns: ['prompt'])" in capsys.readouterr().err


def test_pass_at_k_samples_at_most_batch_size_completions_a_rollout(monkeypatch):
    """A large k is sampled in rollouts of at most batch_size rows (k = 100000 grew one rollout without bound);
    k <= batch_size keeps its one rollout per group of problems."""
    from latentrl import eval as eval_module
    from latentrl.data import make_examples

    lm = tiny_latent_model("qwen2", ["1", "2", "3", "+", "=", "<<", ">>"], seed=0, hidden=16)
    rows = make_examples("chain_sum", 3, seed=0, length=2)
    sizes = []
    real = eval_module.generate_rollout
    monkeypatch.setattr(eval_module, "generate_rollout",
                        lambda model, ids, *a, **kw: sizes.append(ids.shape[0]) or real(model, ids, *a, **kw))
    res = evaluate(lm, rows, k=10, batch_size=4, max_new_positions=3)
    assert sizes == [3] + [4, 4, 2] * 3 and res.k == 10 and len(res.sampled_correct) == 3
    sizes.clear()
    evaluate(lm, rows, k=2, batch_size=4, max_new_positions=3)
    assert sizes == [3, 4, 2]  # greedy, then two problems x 2 copies, then one x 2
