"""Data: schema formats, synthetic tasks (exact iCoT regeneration, determinism, tokenizer round-trip), loaders."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from latentrl.data import (
    TASKS,
    DataFormatError,
    Example,
    cut_steps,
    format_cot,
    format_icot_line,
    format_no_cot,
    format_prompt,
    icot_mult_example,
    icot_mult_factors,
    load_examples,
    load_icot,
    load_prontoqa,
    load_prosqa,
    make_examples,
    split_icot_steps,
    task_vocabulary,
    to_record,
    train_eval_split,
)
from latentrl.data.paths import PACKAGED_DATA, find_real_data_file, find_shared_data
from latentrl.tokenizer import build_word_tokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_file(relative: str) -> Path:
    """A real split: the iCoT files ship in the package; ProsQA only exists where shared/data lies beside the repo."""
    path = find_real_data_file(relative)
    if path is None:
        pytest.skip(f"real data file {relative} not present (only in shared/data beside a project checkout)")
    return path


# --- schema ------------------------------------------------------------------------------------------------------


def test_formats_mirror_the_icot_line():
    ex = Example("1 2 * 3 4", ["3 6 0", "+ 0 4 8 0"], "3 0 9 0")
    assert format_prompt(ex) == "1 2 * 3 4 ||"
    assert format_cot(ex) == " 3 6 0 + 0 4 8 0 #### 3 0 9 0"
    assert format_no_cot(ex) == " #### 3 0 9 0"
    assert format_icot_line(ex) == "1 2 * 3 4||3 6 0 + 0 4 8 0 #### 3 0 9 0"
    record = to_record(ex)
    assert record["prompt"] + record["completion"] == "1 2 * 3 4 || 3 6 0 + 0 4 8 0 #### 3 0 9 0"
    assert record["answer"] == "3 0 9 0"


def test_meta_is_not_part_of_equality():
    assert Example("q", ["s"], "a", {"source": "x"}) == Example("q", ["s"], "a")
    assert Example("q", ["s"], "a") != Example("q", ["s"], "b")


# --- icot_mult: exact regeneration of the real files -----------------------------------------------------------


@pytest.mark.parametrize("relative, digits", [("icot_mult_4x4/valid.txt", 4), ("icot_mult_5x5/valid.txt", 5)])
def test_icot_mult_regenerates_every_real_line(relative, digits):
    path = shared_file(relative)
    lines = path.read_text().splitlines()
    assert len(lines) == 1000
    for line in lines:
        a, b = icot_mult_factors(line.split("||")[0])
        assert len(str(a)) == len(str(b)) == digits
        assert format_icot_line(icot_mult_example(a, b)) == line


@pytest.mark.parametrize("relative", ["icot_mult_4x4/valid.txt", "icot_mult_5x5/valid.txt"])
def test_load_icot_equals_generated_examples(relative):
    path = shared_file(relative)
    loaded = load_icot(path)
    generated = [icot_mult_example(*icot_mult_factors(ex.question)) for ex in loaded]
    assert loaded == generated
    assert loaded[0].meta == {"source": str(path), "line": 1}
    assert all(len(ex.steps) == int(relative[10]) for ex in loaded)  # one step per multiplier digit


def test_icot_mult_hand_checked_example():
    ex = icot_mult_example(2365, 4347)  # first line of the real 4x4 file
    assert ex.question == "5 6 3 2 * 7 4 3 4"
    assert ex.steps == ["5 5 5 6 1", "+ 0 0 6 4 9 0 ( 5 5 1 1 1 1 )", "+ 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 )",
                        "+ 0 0 0 0 6 4 9 0"]
    assert ex.answer == "5 5 6 0 8 2 0 1"
    assert int("".join(reversed(ex.answer.split()))) == 2365 * 4347


def test_icot_mult_digits_knob_and_products():
    for digits, digits_b in [(1, None), (3, None), (4, 2), (6, 6)]:
        for ex in make_examples("icot_mult", 20, seed=digits, digits=digits, digits_b=digits_b):
            a, b = icot_mult_factors(ex.question)
            assert len(str(a)) == digits and len(str(b)) == (digits_b or digits)
            assert int("".join(reversed(ex.answer.split()))) == a * b
            assert len(ex.steps) == len(str(b))



def test_icot_mult_partials_chain_keeps_the_partial_products_and_the_answer():
    """chain=partials: the same problems and answers, each step the partial product alone (the steps sum to the
    answer); an unknown chain is a clear error."""
    ex = icot_mult_example(2365, 4347, chain="partials")
    assert ex.steps == ["5 5 5 6 1", "+ 0 0 6 4 9 0", "+ 0 0 5 9 0 7 0", "+ 0 0 0 0 6 4 9 0"]
    assert ex.answer == icot_mult_example(2365, 4347).answer
    plain = make_examples("icot_mult", 10, seed=3)
    for p, q in zip(make_examples("icot_mult", 10, seed=3, chain="partials"), plain, strict=True):
        assert (p.question, p.answer) == (q.question, q.answer)
        values = [int("".join(reversed(s.lstrip("+ ").split()))) for s in p.steps]
        assert sum(values) == int("".join(reversed(p.answer.split())))
    with pytest.raises(ValueError, match="chain must be one of icot, partials, columns, columns_tens_first"):
        make_examples("icot_mult", 1, chain="sums")


def test_icot_mult_columns_chain_ends_with_the_answers_column_sums():
    """chain=columns: the partial products, then `= S_0 ... S_7`, each column's digits added without carries (two
    digits each, least significant first); the sums carried out give the answer."""
    ex = icot_mult_example(2365, 4347, chain="columns")
    assert ex.steps[:4] == icot_mult_example(2365, 4347, chain="partials").steps
    # 16555, 9460, 7095, 9460 shifted: column sums 5, 5, 5+6+5, 6+4+9+0, 1+9+0+6, 0+7+4, 0+9, 0
    assert ex.steps[4] == "= 5 0 5 0 6 1 9 1 6 1 1 1 9 0 0 0"
    assert ex.answer == icot_mult_example(2365, 4347).answer
    for p in make_examples("icot_mult", 20, seed=4, chain="columns", digits=3, digits_b=5):
        digits = p.steps[-1].split()[1:]
        sums = [int(digits[i]) + 10 * int(digits[i + 1]) for i in range(0, len(digits), 2)]
        assert len(sums) == 8 and sum(v * 10**k for k, v in enumerate(sums)) == int("".join(reversed(p.answer.split())))


def test_icot_mult_columns_tens_first_writes_each_sum_most_significant_digit_first():
    """chain=columns_tens_first: the same sums as chain=columns, each written tens digit first."""
    ex = icot_mult_example(2365, 4347, chain="columns_tens_first")
    assert ex.steps[:4] == icot_mult_example(2365, 4347, chain="partials").steps
    assert ex.steps[4] == "= 0 5 0 5 1 6 1 9 1 6 1 1 0 9 0 0"
    assert ex.answer == icot_mult_example(2365, 4347).answer
    for p, q in zip(make_examples("icot_mult", 20, seed=4, chain="columns_tens_first"),
                    make_examples("icot_mult", 20, seed=4, chain="columns"), strict=True):
        tf, lsb = p.steps[-1].split()[1:], q.steps[-1].split()[1:]
        assert tf == [d for i in range(0, len(lsb), 2) for d in (lsb[i + 1], lsb[i])]

# --- loaders on the real files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", ["gsm8k_aug/valid.txt", "icot_mult_4x4/valid.txt", "icot_mult_5x5/valid.txt"])
def test_icot_lines_round_trip(relative):
    path = shared_file(relative)
    lines = path.read_text(encoding="utf-8").splitlines()
    examples = load_icot(path)
    assert len(examples) == len(lines)
    for ex, line in zip(examples, lines):
        assert format_icot_line(ex) == line
        assert format_prompt(ex)[:-3] + "||" + format_cot(ex)[1:] == line


def test_gsm8k_aug_steps_are_the_equations():
    examples = load_icot(shared_file("gsm8k_aug/valid.txt"))
    assert examples[0].steps == ["<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>"]
    assert examples[0].answer == "300"
    assert examples[0].question.endswith("How much does he pay per year?")
    assert all(s.startswith("<<") and s.endswith(">>") for ex in examples for s in ex.steps)
    assert sum(not ex.steps for ex in examples) == 6  # six lines of the file have no equations


def test_load_real_prosqa():
    path = shared_file("prosqa/valid.json")
    examples = load_prosqa(path)
    assert len(examples) == 300
    first = examples[0]
    assert first.steps == ["Tom is a terpus.", "Every terpus is a brimpus.", "Every brimpus is a lempus."]
    assert first.answer == "Tom is a lempus."
    assert first.question.endswith("Is Tom a lempus or scrompus?")
    assert first.meta["idx_to_symbol"][first.meta["target"]] == "lempus"
    assert first.meta["root"] == 1 and first.meta["item"] == 0
    assert load_examples(str(path)) == examples


def test_real_prosqa_spaced_fits_prosqa_like_vocabulary():
    tok = build_word_tokenizer(task_vocabulary("prosqa_like"))
    examples = load_prosqa(shared_file("prosqa/valid.json"), spaced_punctuation=True)
    assert examples[0].answer == "Tom is a lempus ."
    for ex in examples:
        text = format_prompt(ex) + format_cot(ex)
        assert tok.unk_token_id not in tok(text)["input_ids"]


def test_load_examples_directory_with_split():
    examples = load_examples(str(shared_file("icot_mult_4x4/valid.txt").parent), split="valid")
    assert len(examples) == 1000 and examples[0].answer == "5 5 6 0 8 2 0 1"


@pytest.mark.parametrize("relative", ["icot_mult_4x4/valid.txt", "icot_mult_5x5/valid.txt", "gsm8k_aug/valid.txt"])
def test_packaged_real_splits_are_unchanged_copies(relative):
    """The package ships the iCoT splits (with their licence); where the project's shared/data is present, they are
    byte-identical to it."""
    packaged = PACKAGED_DATA / relative
    assert packaged.is_file() and (PACKAGED_DATA / "LICENSE-Internalize_CoT_Step_by_Step").is_file()
    shared = find_shared_data()
    if shared is None or not (shared / relative).is_file():
        pytest.skip("no shared/data beside the checkout to compare with")
    assert packaged.read_bytes() == (shared / relative).read_bytes()


# --- loaders on fixtures -----------------------------------------------------------------------------------------


def test_load_icot_fixture_with_blank_line_and_empty_reasoning():
    path = FIXTURES / "icot_small.txt"
    examples = load_icot(path)
    assert [ex.answer for ex in examples] == ["5", "36", "2400", "3 0 9 0"]
    assert examples[0].steps == ["<<3+4=7>>", "<<7-2=5>>"]
    assert examples[2].steps == []
    assert examples[3] == icot_mult_example(21, 43)
    assert examples[3].meta["line"] == 5  # the blank line 4 is skipped but still counted
    assert load_examples(str(path)) == examples


def test_load_icot_malformed_names_file_and_line():
    with pytest.raises(DataFormatError, match=r"icot_malformed\.txt, line 3: '####'"):
        load_icot(FIXTURES / "icot_malformed.txt")


@pytest.mark.parametrize(
    "line, problem",
    [
        ("no separator #### 3", "missing '||'"),
        ("|| <<1+1=2>> #### 2", "empty question"),
        ("q||<<1+1=2>> #### ", "empty answer"),
        ("q||a #### b #### c", "found 2 times"),
    ],
)
def test_icot_line_problems_are_reported(tmp_path, line, problem):
    path = tmp_path / "bad.txt"
    path.write_text("q||<<1+1=2>> #### 2\n" + line + "\n")
    with pytest.raises(DataFormatError) as info:
        load_icot(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value) and problem in str(info.value)
    assert info.value.line == 2


def test_split_icot_steps_rules():
    assert split_icot_steps(" <<1+2=3>>   <<3*2=6>> ") == ["<<1+2=3>>", "<<3*2=6>>"]
    assert split_icot_steps("1 2 + 0 3 4 ( 1 5 4 ) + 0 0 1") == ["1 2", "+ 0 3 4 ( 1 5 4 )", "+ 0 0 1"]
    assert split_icot_steps("He has 3 + 4 apples.") == ["He has 3 + 4 apples."]
    assert split_icot_steps("   ") == []


def test_load_prosqa_fixture_and_spacing():
    examples = load_prosqa(FIXTURES / "prosqa_small.json")
    assert len(examples) == 2
    assert examples[0].steps[-1] == "Every yumpus is a rompus."
    assert examples[0].meta["edges"][0] == [2, 3] and examples[0].meta["neg_target"] == 6
    spaced = load_prosqa(FIXTURES / "prosqa_small.json", spaced_punctuation=True)
    assert spaced[1].question.endswith("Is Sam a gorpus or jompus ?")
    assert spaced[1].steps == ["Sam is a lempus .", "Every lempus is a gorpus ."]
    assert spaced[1].answer == "Sam is a gorpus ."


def test_load_prosqa_malformed_names_file_and_item():
    with pytest.raises(DataFormatError, match=r"prosqa_malformed\.json, item 1 \(0-based\): missing field 'answer'"):
        load_prosqa(FIXTURES / "prosqa_malformed.json")


def test_load_prosqa_rejects_non_list_and_bad_json(tmp_path):
    one = tmp_path / "obj.json"
    one.write_text(json.dumps({"question": "q", "steps": [], "answer": "a"}))
    assert load_prosqa(one) == [Example("q", [], "a")]  # one record, as load_dataset("json") reads it
    not_list = tmp_path / "text.json"
    not_list.write_text(json.dumps("q"))
    with pytest.raises(DataFormatError, match="expected a JSON list"):
        load_prosqa(not_list)
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"question": "q",\n   "steps": [}\n]')
    with pytest.raises(DataFormatError, match=r"broken\.json, line 3: invalid JSON"):
        load_prosqa(broken)
    bad_steps = tmp_path / "steps.json"
    bad_steps.write_text(json.dumps([{"question": "q", "steps": [1, 2], "answer": "a"}]))
    with pytest.raises(DataFormatError, match=r"item 0 .*'steps' must be a list of strings"):
        load_prosqa(bad_steps)


def test_load_prontoqa_fixture():
    examples = load_prontoqa(FIXTURES / "prontoqa_small.json")
    assert [ex.answer for ex in examples] == ["True", "False", "True"]
    assert examples[1].question.endswith("True or false: Polly is sour.")
    assert examples[0].steps[0] == "Max is a jompus. Jompuses are zumpuses."
    assert format_cot(examples[2]) == " Sally is a numpus. Every numpus is red. Sally is red. #### True"


def test_load_jsonl_gsm8k_style_answers():
    examples = load_examples(str(FIXTURES / "gsm8k_small.jsonl"))
    assert [ex.answer for ex in examples] == ["60", "1,200", "10"]
    assert examples[0].steps == ["She reads 12 * 5 = <<12*5=60>>60 pages."]
    assert examples[2].meta["line"] == 4  # blank line 3 skipped


def test_load_jsonl_malformed_names_file_and_line():
    with pytest.raises(DataFormatError, match=r"gsm8k_malformed\.jsonl, line 2: invalid JSON"):
        load_examples(str(FIXTURES / "gsm8k_malformed.jsonl"))


def test_load_csv_with_column_mapping():
    path = FIXTURES / "qa_small.csv"
    examples = load_examples(str(path), question_field="problem", answer_field="solution", steps_field="reasoning")
    assert examples == [
        Example("What is 2 plus 3?", ["2 + 3 = 5"], "5"),
        Example("What is 4 times 6?", ["4 * 6 = 24"], "24"),
    ]
    with pytest.raises(DataFormatError, match=r"qa_small\.csv, item 0 \(0-based\): missing field 'question'"):
        load_examples(str(path))


def test_load_parquet_and_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"question": ["How many legs do 2 cats have?", "What is 9 minus 4?"],
            "answer": ["Each cat has 4 legs.\n2 * 4 = 8\n#### 8", "#### 5"]}
    parquet = tmp_path / "train.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(parquet))
    examples = load_examples(str(parquet))
    assert examples[0] == Example("How many legs do 2 cats have?", ["Each cat has 4 legs.", "2 * 4 = 8"], "8")
    assert examples[1] == Example("What is 9 minus 4?", [], "5")
    # a directory without {split}.<ext> goes through datasets.load_dataset, as a hub id would
    assert load_examples(str(tmp_path)) == examples
    assert load_examples(str(tmp_path), split="train") == examples


def test_json_files_are_read_by_content_and_saved_datasets_load_like_load_dataset(tmp_path):
    """As `load_dataset("json")` reads them, whatever the suffix: a JSON array in a .jsonl file, a pretty-printed
    one, one object in a .json file. A `Dataset.save_to_disk` folder (and a `DatasetDict` one, by split) loads.
    A folder with no file for the split names what it holds; a CSV that is not UTF-8 says so."""
    datasets = pytest.importorskip("datasets")
    rows = [{"question": "q", "answer": "1"}, {"question": "r", "answer": "2"}]
    want = [Example("q", [], "1"), Example("r", [], "2")]
    for name, text in [("array.jsonl", json.dumps(rows)), ("pretty.jsonl", json.dumps(rows, indent=2)),
                       ("lines.json", "".join(json.dumps(r) + "\n" for r in rows))]:
        (tmp_path / name).write_text(text)
        assert load_examples(str(tmp_path / name)) == want, name
    (tmp_path / "object.jsonl").write_text(json.dumps(rows[0], indent=2))
    assert load_examples(str(tmp_path / "object.jsonl")) == want[:1]
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + '\n{"question": oops}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 2: invalid JSON"):
        load_examples(str(tmp_path / "bad.jsonl"))

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert load_examples(str(tmp_path / "saved")) == want
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1]),
                          "test": datasets.Dataset.from_list(rows[1:])}).save_to_disk(str(tmp_path / "saved_dict"))
    assert load_examples(str(tmp_path / "saved_dict"), split="train") == want[:1]
    assert load_examples(str(tmp_path / "saved_dict"), split="eval") == want[1:]

    only_valid = tmp_path / "only_valid"
    only_valid.mkdir()
    (only_valid / "valid.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"no train file .* \(it holds valid\.jsonl: name the file"):
        load_examples(str(only_valid), split="train")
    assert load_examples(str(only_valid), split="eval") == want[:1]
    (tmp_path / "latin1.csv").write_bytes(b"question,answer\ncaf\xe9?,1\n")
    with pytest.raises(DataFormatError, match="save the file as UTF-8"):
        load_examples(str(tmp_path / "latin1.csv"))


def test_missing_files_raise_file_not_found(tmp_path):
    for name in ("nope.txt", "nope.json", "nope.jsonl", "nope.csv", "nope.parquet"):
        with pytest.raises(FileNotFoundError, match="nope"):
            load_examples(str(tmp_path / name))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_prosqa(tmp_path / "missing.json")


def test_hub_ids_go_to_datasets_and_failures_list_tasks(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None):  # no hub here: record the call, answer like a hub would
        calls.append((path, name, split))
        if path == "someone/tiny-gsm":
            return datasets.Dataset.from_dict({"question": ["What is 1 + 1?"], "answer": ["1 + 1 = 2\n#### 2"]})
        raise ConnectionError(f"Couldn't reach {path!r} on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_examples("someone/tiny-gsm", "test", config_name="main") == [
        Example("What is 1 + 1?", ["1 + 1 = 2"], "2")
    ]
    with pytest.raises(ValueError, match=r"not a synthetic task \(chain_sum, icot_mult, prosqa_like\).*Connection"):
        load_examples("no_such_task_or_dataset_xyz")
    assert calls == [("someone/tiny-gsm", "main", "test"), ("no_such_task_or_dataset_xyz", None, "train")]


@pytest.mark.parametrize("name, text", [("a.txt", "3 5 * 1 2||1 2 #### 5 6\n"),
                                        ("a.jsonl", '{"question": "3 5 * 1 2", "answer": "5 6"}\n'),
                                        ("a.json", '[{"question": "3 5 * 1 2", "answer": "5 6"}]\n')])
def test_a_byte_order_mark_is_dropped_and_other_encodings_name_the_line(tmp_path, name, text):
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_examples(str(tmp_path / name))[0].question == "3 5 * 1 2"  # not "\ufeff3 5 * 1 2"
    (tmp_path / name).write_bytes(text.encode() + "4 é\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=rf"{name}, line 2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        load_examples(str(tmp_path / name))


def _dataset_folder(root, rows_by_config):
    """A local dataset folder in the hub layout: one config per key, its `test` split in CONFIG/test.jsonl."""
    lines = ["---", "configs:"]
    for config, rows in rows_by_config.items():
        (root / config).mkdir(parents=True)
        (root / config / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines += [f"- config_name: {config}", "  data_files:", "  - split: test", f"    path: {config}/test.jsonl"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))
    return root


def test_two_local_dataset_folders_of_one_name_are_read_each_from_its_own_files(tmp_path):
    """datasets' cache keys a local folder by its name and relative paths: the second folder once came back with
    the first one's rows. Local sources are read afresh."""
    pytest.importorskip("datasets")
    first = _dataset_folder(tmp_path / "a" / "ds", {"main": [{"question": "1 1", "answer": "2"}],
                                                    "other": [{"question": "2 2", "answer": "4"}]})
    second = _dataset_folder(tmp_path / "b" / "ds", {"main": [{"question": "3 3", "answer": "6"}] * 2,
                                                     "other": [{"question": "4 4", "answer": "8"}] * 3})
    assert [e.question for e in load_examples(str(first), "eval", config_name="other")] == ["2 2"]
    assert [e.question for e in load_examples(str(second), "eval", config_name="other")] == ["4 4"] * 3
    assert [e.question for e in load_examples(str(second), "eval", config_name="main")] == ["3 3"] * 2


def test_eval_passes_dataset_config_to_the_loader(tmp_path, capsys):
    from latentrl.cli import main

    folder = _dataset_folder(tmp_path / "gsm", {"main": [{"question": "1 1", "answer": "2"}],
                                                "other": [{"question": "2 2", "answer": "4"}] * 3})
    assert main(["eval", "--model", "chain_sum-cot", "--data", str(folder), "--num", "5", "--k", "0",
                 "--no-thought-check", "dataset_config=other"]) == 0
    assert f"3 problems of {folder}" in capsys.readouterr().err


# --- synthetic tasks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(TASKS))
def test_generators_are_deterministic_and_leave_global_rng_alone(task):
    random.seed(123)
    state = random.getstate()
    first = make_examples(task, 30, seed=7)
    assert random.getstate() == state
    assert make_examples(task, 30, seed=7) == first
    assert make_examples(task, 30, seed=8) != first
    assert [ex.meta for ex in make_examples(task, 5, seed=7)] == [ex.meta for ex in first[:5]]


@pytest.mark.parametrize(
    "task, knobs",
    [
        ("icot_mult", {}), ("icot_mult", {"digits": 5}), ("icot_mult", {"digits": 3, "digits_b": 6}),
        ("chain_sum", {}), ("chain_sum", {"modulus": 23, "ops": "+-*"}), ("chain_sum", {"length": 3, "ops": "-"}),
        ("prosqa_like", {}), ("prosqa_like", {"nodes": 20, "path_length": 6}),
    ],
)  # fmt: skip
def test_task_text_round_trips_through_word_tokenizer(task, knobs):
    tok = build_word_tokenizer(task_vocabulary(task))
    for ex in make_examples(task, 50, seed=1, **knobs):
        text = format_prompt(ex) + format_cot(ex)
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == " ".join(text.split())


def test_chain_sum_steps_are_the_running_values():
    for ex in make_examples("chain_sum", 50, seed=3):
        digits = [int(d) for d in ex.question.split()]
        assert len(digits) == 8 and len(ex.steps) == 7
        running = digits[0]
        for step, d in zip(ex.steps, digits[1:]):
            assert step == f"<< {running} + {d} = {(running + d) % 10} >>"
            running = (running + d) % 10
        assert ex.answer == str(running)
    # other op sets write the operators into the question and evaluate left to right
    ex = make_examples("chain_sum", 1, seed=0, length=5, modulus=23, ops="+-*")[0]
    tokens = ex.question.split()
    value = int(tokens[0])
    for op, x in zip(tokens[1::2], tokens[2::2]):
        value = {"+": value + int(x), "-": value - int(x), "*": value * int(x)}[op] % 23
    assert ex.answer == " ".join(str(value))


def test_chain_sum_in_icot_format_round_trips(tmp_path):
    examples = make_examples("chain_sum", 20, seed=0, ops="+-")
    path = tmp_path / "chain.txt"
    path.write_text("\n".join(format_icot_line(ex) for ex in examples) + "\n")
    assert load_icot(path) == examples


def _reachable(edges: list[list[int]], start: int) -> set[int]:
    seen, todo = {start}, [start]
    while todo:
        u = todo.pop()
        for a, b in edges:
            if a == u and b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def test_prosqa_like_graphs_are_valid(tmp_path):
    examples = make_examples("prosqa_like", 100, seed=5, nodes=12, path_length=4)
    for ex in examples:
        m = ex.meta
        symbols, root = m["idx_to_symbol"], m["root"]
        reach = _reachable(m["edges"], root)
        assert m["target"] in reach and m["neg_target"] not in reach
        assert len(ex.steps) == 4 and ex.steps[0].startswith(f"{symbols[root]} is a ")
        assert ex.answer == f"{symbols[root]} is a {symbols[m['target']]} ."
        facts = ex.question.split(" Is ")[0]
        assert all(step in facts for step in ex.steps)
        assert ex.question.endswith("?") and symbols[m["neg_target"]] in ex.question.split(" Is ")[-1]
    # the generated examples are in ProsQA's JSON schema and load back unchanged
    path = tmp_path / "gen.json"
    rows = [{"question": ex.question, "steps": ex.steps, "answer": ex.answer,
             **{k: v for k, v in ex.meta.items() if k != "task"}} for ex in examples]  # fmt: skip
    path.write_text(json.dumps(rows))
    loaded = load_prosqa(path)
    assert loaded == examples and loaded[3].meta["edges"] == examples[3].meta["edges"]


def test_vocabularies():
    assert task_vocabulary("icot_mult") == [] and task_vocabulary("chain_sum") == []
    vocab = task_vocabulary("prosqa_like")
    assert {"Every", "is", "a", "Is", "or", "Tom", "lempus"} <= set(vocab)
    assert len(vocab) == len(set(vocab))


def test_bad_task_and_knobs_list_the_allowed_ones():
    with pytest.raises(ValueError, match="icot_mult.*prosqa_like"):
        make_examples("nope", 1, 0)
    with pytest.raises(ValueError, match=r"no knob 'size'.*digits \(default 4\)"):
        make_examples("icot_mult", 1, 0, size=3)
    with pytest.raises(ValueError, match="length must be an int >= 2"):
        make_examples("chain_sum", 1, 0, length=1)
    with pytest.raises(ValueError, match="ops must be"):
        make_examples("chain_sum", 1, 0, ops="+/")
    with pytest.raises(ValueError, match=r"nodes must be an int in \[6, 38\]"):
        make_examples("prosqa_like", 0, 0, nodes=5, path_length=3)
    with pytest.raises(ValueError, match="task_vocabulary|unknown task"):
        task_vocabulary("nope")


def test_train_eval_split_is_disjoint_and_matches_make_examples():
    train, evals = train_eval_split("chain_sum", 2000, 200, seed=0, length=3)
    assert len(train) == 2000 and len(evals) == 200
    assert not {ex.question for ex in train} & {ex.question for ex in evals}
    assert evals == make_examples("chain_sum", 200, 0, length=3)
    assert train_eval_split("chain_sum", 2000, 200, seed=0, length=3) == (train, evals)
    excluded = {ex.question for ex in make_examples("chain_sum", 300, seed=99, length=3)}
    train2, _ = train_eval_split("chain_sum", 500, 10, seed=0, exclude=excluded, length=3)
    assert not {ex.question for ex in train2} & excluded
    with pytest.raises(ValueError, match="question space is too small"):
        train_eval_split("chain_sum", 10, 1000, seed=0, length=2)  # only 100 questions exist


@pytest.mark.parametrize("task, knobs", [
    ("icot_mult", {"digits": 4, "chain": "columns_tens_first"}), ("icot_mult", {"digits": 3, "digits_b": 2}),
    ("chain_sum", {}), ("chain_sum", {"ops": "+-*", "modulus": 13, "length": 3}), ("prosqa_like", {}),
])
def test_questions_only_split_equals_the_full_splits_questions(task, knobs):
    """`train_eval_questions` (no chains built; what provenance regenerates) draws the same stream as
    `train_eval_split`, banned and excluded questions included."""
    from latentrl.data.tasks import train_eval_questions

    exclude = [ex.question for ex in make_examples(task, 40, seed=7, **knobs)]
    train, evals = train_eval_split(task, 1500, 60, 5, exclude=exclude, **knobs)
    assert train_eval_questions(task, 1500, 60, 5, exclude=exclude, **knobs) == \
        ([ex.question for ex in train], [ex.question for ex in evals])


@pytest.mark.parametrize("task, knobs", [("icot_mult", {"digits": 2}), ("chain_sum", {"length": 4})])
def test_a_split_skipping_many_excluded_draws_equals_the_plain_one(monkeypatch, task, knobs):
    """With more excluded questions than train examples, `train_eval_split` writes each draw's question first and
    builds only the kept examples; the result equals the plain path's (the spec without `draw`), eval draws that are
    excluded questions included."""
    import dataclasses

    from latentrl.data import tasks

    stream = [ex.question for ex in make_examples(task, 400, 0, **knobs)]
    exclude = set(stream[:5] + stream[30:350])  # eval questions and most of the train stream's start
    fast = train_eval_split(task, 100, 20, 0, exclude=exclude, **knobs)
    monkeypatch.setitem(tasks.TASKS, task, dataclasses.replace(tasks.TASKS[task], draw=None))
    assert train_eval_split(task, 100, 20, 0, exclude=exclude, **knobs) == fast
    assert not {ex.question for ex in fast[0]} & exclude and fast[1] == make_examples(task, 20, 0, **knobs)


def test_load_examples_synthetic_splits():
    kw = {"n_train": 300, "n_eval": 50, "seed": 4, "length": 4}
    train = load_examples("chain_sum", "train", **kw)
    evals = load_examples("chain_sum", "eval", **kw)
    assert len(train) == 300 and len(evals) == 50
    assert not {ex.question for ex in train} & {ex.question for ex in evals}
    assert load_examples("icot_mult", n=3, seed=1) == make_examples("icot_mult", 3, 1)
    # without n_eval the train split leaves out the first 500 draws, the default eval split
    default_train = load_examples("chain_sum", "train", n=200, seed=4, length=4)
    default_eval = load_examples("chain_sum", "eval", n=500, seed=4, length=4)
    assert not {ex.question for ex in default_train} & {ex.question for ex in default_eval}
    with pytest.raises(ValueError, match="n_train"):
        load_examples("chain_sum", "train", n_eval=10)
    # exclude= keeps other held-out questions (a real validation file's) out of the train split, and only there
    banned = {ex.question for ex in train[:40]}
    kept = load_examples("chain_sum", "train", exclude=banned, **kw)
    assert len(kept) == 300 and not banned & {ex.question for ex in kept}
    assert [ex for ex in train if ex.question not in banned] == kept[: 300 - sum(ex.question in banned for ex in train)]
    with pytest.raises(ValueError, match="train' split only"):
        load_examples("chain_sum", "eval", exclude=banned, **kw)


def test_load_examples_n_and_seed_work_for_files_too():
    path = str(FIXTURES / "icot_small.txt")
    assert load_examples(path, split="train", n=2, seed=3) == load_icot(path)[:2]
    assert len(load_examples(str(FIXTURES / "prosqa_small.json"), n=10)) == 2


# ------------------------------------------------------------------------------------- public math datasets
def test_math500_rows_load_without_column_options():
    examples = load_examples(FIXTURES / "math500_small.jsonl")
    assert [e.answer for e in examples] == ["14", "\\frac{3}{4}", "4"]
    assert examples[0].question == "What is the value of $\\sqrt{36} + 2^3$?"
    assert examples[2].steps == ["Subtract 3: $2x = 8$.", "Divide by 2: $x=\\boxed{4}$."]
    assert examples[0].meta["subject"] == "Prealgebra" and examples[0].meta["level"] == 1


def test_hendrycks_math_answer_is_the_last_boxed_of_the_solution():
    pytest.importorskip("datasets")
    examples = load_examples(FIXTURES / "math_small.parquet")
    assert [e.answer for e in examples] == ["14", "\\frac{3}{4}", "4"]
    assert examples[1].meta["type"] == "Prealgebra"


def test_dapo_math_rows_take_the_user_message_and_the_ground_truth():
    pytest.importorskip("datasets")
    examples = load_examples(FIXTURES / "dapo_math_small.parquet")
    assert [e.answer for e in examples] == ["16", "6"]
    assert "Compute $3 \\cdot 7 - 5$." in examples[0].question and examples[0].question.startswith("Solve")
    assert examples[0].meta["messages"][0]["role"] == "user"
    assert examples[0].meta["data_source"] == "math_dapo" and "reward_model" not in examples[0].meta


def test_row_format_errors_name_the_row(tmp_path):
    bad = tmp_path / "math.jsonl"
    bad.write_text(json.dumps({"problem": "1+1?", "solution": "It is 2.", "answer": ""}) + "\n")
    with pytest.raises(DataFormatError, match=r"math\.jsonl, line 1: the 'solution' has no complete \\boxed"):
        load_examples(bad)
    dapo = tmp_path / "dapo.jsonl"
    dapo.write_text(json.dumps({"prompt": 7, "reward_model": {"ground_truth": "1"}}) + "\n")
    with pytest.raises(DataFormatError, match=r"line 1: field 'prompt' must be a string or a list of chat"):
        load_examples(dapo)
    with pytest.raises(DataFormatError, match=r"missing field 'reward_model'"):
        load_examples(_write(tmp_path, {"prompt": "q"}), row_format="dapo_math")
    with pytest.raises(ValueError, match="unknown dataset format 'nope'"):
        load_examples(dapo, row_format="nope")


def _write(tmp_path, row) -> str:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return str(path)


def test_eval_alias_finds_the_test_split_of_a_directory_and_a_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "train.jsonl").write_text((FIXTURES / "gsm8k_small.jsonl").read_text())
    (folder / "test.jsonl").write_text((FIXTURES / "gsm8k_small.jsonl").read_text().splitlines()[0] + "\n")
    assert len(load_examples(folder, split="eval")) == 1 and len(load_examples(folder, split="train")) >= 2
    # a hub-style parquet folder (`data/test-00000-of-00001.parquet`) read by datasets: "eval" resolves to "test"
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for split, n in (("train", 2), ("test", 1)):
        rows = [json.loads(x) for x in (FIXTURES / "gsm8k_small.jsonl").read_text().splitlines()[:n]]
        datasets.Dataset.from_list(rows).to_parquet(str(hub / f"{split}-00000-of-00001.parquet"))
    evals = load_examples(tmp_path / "hub", split="eval")
    assert [e.answer for e in evals] == ["60"]


def test_train_config_reads_public_dataset_formats(tmp_path):
    from latentrl.cli import load_train_data
    from latentrl.config import ConfigError, GRPOConfig, config_from_dict

    cfg = config_from_dict(GRPOConfig, {"model_name_or_path": "m", "dataset": str(FIXTURES / "math500_small.jsonl"),
                                         "num_train_examples": 2})
    assert [e.answer for e in load_train_data(cfg)] == ["14", "\\frac{3}{4}"]
    cfg = config_from_dict(GRPOConfig, {"model_name_or_path": "m", "dataset": str(FIXTURES / "gsm8k_small.jsonl"),
                                         "dataset_format": "math"})
    with pytest.raises(DataFormatError, match="missing field 'problem'"):
        load_train_data(cfg)
    with pytest.raises(ConfigError, match="dataset_format"):
        config_from_dict(GRPOConfig, {"model_name_or_path": "m", "dataset_format": "gsm9k"})


def test_cut_steps_moves_step_boundaries_and_keeps_the_chain_text():
    """iCoT's "+ partial ( running sum )" steps cut before "(": a multiplication step and an addition step each;
    the chain's text, question, answer and metadata are unchanged, and a step without the word stays whole."""
    ex = icot_mult_example(2365, 4347)  # the valid file's first problem, "5 6 3 2 * 7 4 3 4"
    cut = cut_steps([ex], before="(")[0]
    assert cut.steps == ["5 5 5 6 1", "+ 0 0 6 4 9 0", "( 5 5 1 1 1 1 )", "+ 0 0 5 9 0 7 0", "( 5 5 6 0 2 8 0 )",
                         "+ 0 0 0 0 6 4 9 0"]
    assert format_cot(cut) == format_cot(ex) and (cut.question, cut.answer, cut.meta) == (ex.question, ex.answer, ex.meta)
    assert cut_steps([ex], before="#")[0].steps == ex.steps
    assert cut_steps([Example("q", ["( a )"], "1")], before="(")[0].steps == ["( a )"]  # no empty step at the front

