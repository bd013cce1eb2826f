"""Readers that turn real data files (and synthetic task names) into `Example`s.

Formats:
- iCoT text (`.txt`), used by GSM8k-Aug and iCoT multiplication: one `question||steps #### answer` per line.
- Coconut JSON (`.json`), used by ProsQA and ProntoQA: a list of `{"question", "steps", "answer", ...}` objects.
- Tables (`.jsonl`, `.parquet`, `.csv`) and hub datasets, with configurable column names; GSM8K-style answers
  (`reasoning ... #### 42`) are split into steps and final answer.

Malformed rows raise `DataFormatError` naming the file and the line (or item) so a bad row in a 100k-line file
can be found; missing files raise `FileNotFoundError` with the path.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from latentrl.data.formats import PROMPT_FORMAT, RowFormatError, adapt_row, detect_format, prompt_row
from latentrl.data.schema import ANSWER_MARK, PROMPT_END, DataFormatError, Example
from latentrl.data.tasks import TASKS, make_examples, train_eval_split

PathLikeStr = str | PathLike[str]

# ---------------------------------------------------------------------------------------------------------------
# iCoT text format
# ---------------------------------------------------------------------------------------------------------------

_EQUATION = re.compile(r"<<.*?>>")
_MULT_TOKENS = frozenset("0123456789") | {"+", "(", ")"}


def cut_steps(examples: Sequence[Example], before: str) -> list[Example]:
    """The examples with every chain step cut before each inner occurrence of the word `before` (e.g. "(" turns an
    iCoT step "+ partial ( running sum )" into "+ partial" and "( running sum )"). The chain's words stay the same
    and in order (`" ".join(steps)` is unchanged), so a CoT model sees the same text; only the step boundaries a
    curriculum works on move."""
    out = []
    for ex in examples:
        steps: list[str] = []
        for step in ex.steps:
            words = step.split()
            cuts = [0] + [i for i, w in enumerate(words) if w == before and i > 0] + [len(words)]
            steps += [" ".join(words[a:b]) for a, b in zip(cuts, cuts[1:])]
        out.append(dataclasses.replace(ex, steps=steps))
    return out


def split_icot_steps(reasoning: str) -> list[str]:
    """Split the reasoning part of an iCoT line into steps, so that `" ".join(steps)` gives it back.

    Rule (whitespace is normalised to single spaces first):
    1. If the reasoning is nothing but `<<...>>` equations (GSM8k-Aug, `chain_sum`), each equation is a step.
    2. Else, if it is only digits, `+`, `(` and `)` (iCoT multiplication), a new step starts at every `+`
       token: the first partial product, then `+ partial ( running sum )` per further digit of the multiplier,
       i.e. one step per partial product, as iCoT removes them.
    3. Anything else is a single step.
    """
    text = " ".join(reasoning.split())
    if not text:
        return []
    equations = _EQUATION.findall(text)
    if equations and " ".join(equations) == text:
        return equations
    tokens = text.split(" ")
    if not set(tokens) <= _MULT_TOKENS:
        return [text]
    steps: list[list[str]] = [[]]
    for tok in tokens:
        if tok == "+" and steps[-1]:
            steps.append([])
        steps[-1].append(tok)
    return [" ".join(step) for step in steps]


def parse_icot_line(line: str, path: PathLikeStr = "<string>", lineno: int = 1) -> Example:
    """One `question||steps #### answer` line as an Example; `path`/`lineno` only label errors and meta."""
    question, sep, rest = line.partition(PROMPT_END)
    if not sep:
        raise DataFormatError(path, f"missing '{PROMPT_END}' between question and reasoning", line=lineno)
    if not question.strip():
        raise DataFormatError(path, f"empty question before '{PROMPT_END}'", line=lineno)
    marks = rest.count(ANSWER_MARK)
    if marks != 1:
        what = "missing" if marks == 0 else f"found {marks} times"
        raise DataFormatError(path, f"'{ANSWER_MARK}' before the answer is {what}; expected exactly once", line=lineno)
    reasoning, _, answer = rest.partition(ANSWER_MARK)
    if not answer.strip():
        raise DataFormatError(path, f"empty answer after '{ANSWER_MARK}'", line=lineno)
    meta = {"source": str(path), "line": lineno}
    return Example(question.strip(), split_icot_steps(reasoning), " ".join(answer.split()), meta)


def load_icot(path: PathLikeStr) -> list[Example]:
    """All examples of an iCoT-format text file (GSM8k-Aug, iCoT multiplication); blank lines are skipped."""
    file = _existing_file(path)
    examples = []
    for lineno, raw in enumerate(_read_text(file).splitlines(), 1):
        line = raw.rstrip("\r\n")
        if line.strip():
            examples.append(parse_icot_line(line, file, lineno))
    return examples


def _fresh_if_local(source: str | Path) -> dict[str, Any]:
    """`load_dataset` options that read a local source again rather than from datasets' cache: the cache is keyed
    by the folder's name and its files' relative paths, so a second local folder of the same name and layout (or
    the same folder edited) was answered with the first one's rows, without a word (and then its recorded split
    sizes would refuse the fresh read)."""
    return {"download_mode": "force_redownload", "verification_mode": "no_checks"} if Path(source).exists() else {}


def _read_text(file: Path) -> str:
    """A data file's text: UTF-8, a byte-order mark dropped (it would join the first question's first word); other
    encodings are a `DataFormatError` naming the line."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFormatError(file, f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8",
                              line=line) from None


# ---------------------------------------------------------------------------------------------------------------
# Rows (JSON objects, table rows, hub rows) -> Example
# ---------------------------------------------------------------------------------------------------------------

_END_PUNCT = re.compile(r"(?<=\S)([.?!,;:])(?=\s|$)")


def _space_punctuation(text: str) -> str:
    """`"Every X is a Y."` -> `"Every X is a Y ."`: the word-tokenizer form used by the synthetic tasks."""
    return _END_PUNCT.sub(r" \1", text)


def _scalar_text(value: Any) -> str | None:
    """An answer cell as text; None for anything else, including the NaN a CSV reader gives an empty cell."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None


def _row_to_example(
    row: Mapping[str, Any],
    path: PathLikeStr,
    where: dict[str, int],
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    steps_field: str | None = None,
    require_steps: bool = False,
    spaced_punctuation: bool = False,
    row_format: str = "auto",
    prompt_rows: bool = False,
) -> Example | dict[str, Any]:
    """One row as an Example. `where` is `{"line": n}` or `{"item": i}` for error messages.

    Rows of a known public dataset (`row_format`, see `latentrl.data.formats`) are first mapped onto the
    canonical question/answer/steps columns; `auto` does so only when no column was named and the row has no
    `question` column. With `prompt_rows`, a row in TRL's prompt format comes back as a checked dict row.
    """
    if not isinstance(row, Mapping):
        raise DataFormatError(path, f"expected an object, got {type(row).__name__}", **where)
    if row_format != "auto" or (question_field == "question" and "question" not in row):
        try:
            if prompt_rows and (row_format if row_format != "auto" else detect_format(row)) == PROMPT_FORMAT:
                return prompt_row(row)
            row = adapt_row(row, row_format)
        except RowFormatError as e:
            raise DataFormatError(path, str(e), **where) from e
    for name in (question_field, answer_field) + ((steps_field or "steps",) if require_steps else ()):
        if name not in row:
            raise DataFormatError(path, f"missing field {name!r} (fields: {', '.join(map(str, row))})", **where)
    question = row[question_field]
    if not isinstance(question, str) or not question.strip():
        raise DataFormatError(path, f"field {question_field!r} must be a non-empty string, got {question!r}", **where)
    answer = _scalar_text(row[answer_field])
    if answer is None or not answer.strip():
        raise DataFormatError(path, f"field {answer_field!r} must be a non-empty answer, got {row[answer_field]!r}",
                              **where)
    steps: list[str] = []
    if ANSWER_MARK in answer:  # GSM8K style: "reasoning lines\n#### 42"
        reasoning, _, answer = answer.rpartition(ANSWER_MARK)
        steps = [s.strip() for s in reasoning.splitlines() if s.strip()]
        if not answer.strip():
            raise DataFormatError(path, f"field {answer_field!r} has nothing after '{ANSWER_MARK}'", **where)
    key = steps_field or "steps"
    if key in row and row[key] is not None:
        raw = row[key]
        if isinstance(raw, str):
            steps = [s.strip() for s in raw.splitlines() if s.strip()]
        elif isinstance(raw, (list, tuple)) and all(isinstance(s, str) for s in raw):
            steps = [s.strip() for s in raw]
        else:
            raise DataFormatError(path, f"field {key!r} must be a list of strings or a string, got {raw!r}", **where)
    elif steps_field is not None:
        raise DataFormatError(path, f"missing field {steps_field!r}", **where)
    question, answer = question.strip(), " ".join(answer.split())
    if spaced_punctuation:
        question, answer = _space_punctuation(question), _space_punctuation(answer)
        steps = [_space_punctuation(s) for s in steps]
    used = {question_field, answer_field, key}
    meta = {k: v for k, v in row.items() if k not in used}
    meta.update(source=str(path), **where)
    return Example(question, steps, answer, meta)


def _rows_to_examples(rows: Iterable[Mapping[str, Any]], path: PathLikeStr, **fields: Any) -> list[Example]:
    return [_row_to_example(row, path, {"item": i}, **fields) for i, row in enumerate(rows)]


# ---------------------------------------------------------------------------------------------------------------
# JSON (Coconut's ProsQA / ProntoQA) and JSON lines
# ---------------------------------------------------------------------------------------------------------------


def _load_json_list(path: PathLikeStr, **fields: Any) -> list[Example]:
    file = _existing_file(path)
    text = _read_text(file)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a JSON-lines file named .json, as `datasets` often writes them
            return _parse_jsonl(file, text, **fields)
        raise DataFormatError(file, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from e
    if isinstance(data, dict):
        data = [data]  # one record, as `load_dataset("json")` reads it
    if not isinstance(data, list):
        raise DataFormatError(file, f"expected a JSON list of objects with question/steps/answer, got "
                                    f"{type(data).__name__}")
    return _rows_to_examples(data, file, **fields)


def load_prosqa(path: PathLikeStr, *, spaced_punctuation: bool = False) -> list[Example]:
    """Coconut's ProsQA JSON: graph fields (`idx_to_symbol`, `edges`, `root`, `target`, `neg_target`) go to meta.

    `spaced_punctuation=True` writes `lempus.` as `lempus .`, the form of the `prosqa_like` task, so a model
    trained on generated data can be evaluated on the real file with the same word tokenizer.
    """
    return _load_json_list(path, require_steps=True, spaced_punctuation=spaced_punctuation)


def load_prontoqa(path: PathLikeStr, *, spaced_punctuation: bool = False) -> list[Example]:
    """Coconut's preprocessed ProntoQA JSON (same question/steps/answer schema as ProsQA; answer True/False)."""
    return _load_json_list(path, require_steps=True, spaced_punctuation=spaced_punctuation)


def _parse_jsonl(file: Path, text: str, **fields: Any) -> list[Example]:
    """JSON lines; a file that is one JSON document instead (a list of rows, or a pretty-printed object) is read as
    `load_dataset("json")` reads it, whatever its suffix."""
    examples = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            document = _json_document(text) if not examples else None
            if document is not None:
                return _rows_to_examples(document, file, **fields)
            raise DataFormatError(file, f"invalid JSON: {e.msg} (column {e.colno})", line=lineno) from e
        if isinstance(row, list) and not examples and lineno == len(text.splitlines()):
            return _rows_to_examples(row, file, **fields)  # a JSON array on one line
        examples.append(_row_to_example(row, file, {"line": lineno}, **fields))
    return examples


def _json_document(text: str) -> list[Any] | None:
    """`text` as one JSON document of rows (a list, or one object as one row); None if it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return [data] if isinstance(data, dict) else data if isinstance(data, list) else None


def load_jsonl(path: PathLikeStr, **fields: Any) -> list[Example]:
    """JSON lines, one object per line. Parsed here rather than by `datasets` so errors name the exact line."""
    file = _existing_file(path)
    return _parse_jsonl(file, _read_text(file), **fields)


def load_table(path: PathLikeStr, **fields: Any) -> list[Example]:
    """A `.parquet` or `.csv` file read through `datasets`; errors name the 0-based row index."""
    import datasets

    file = _existing_file(path)
    builder = {".parquet": "parquet", ".csv": "csv"}[file.suffix.lower()]
    try:
        table = datasets.load_dataset(builder, data_files=str(file), split="train", **_fresh_if_local(file))
    except Exception as e:  # datasets wraps parser errors in several exception types: name the one underneath
        cause = e
        while (cause.__cause__ or cause.__context__) is not None:
            cause = cause.__cause__ or cause.__context__
        detail = "" if cause is e else f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})"
        utf8 = isinstance(cause, UnicodeDecodeError) or "utf8" in str(cause).lower().replace("-", "")
        hint = "; save the file as UTF-8" if utf8 else ""
        raise DataFormatError(file, f"datasets could not read it as {builder}: {e}{detail}{hint}") from e
    return _rows_to_examples(table, file, **fields)


# ---------------------------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------------------------

_FIELD_KEYS = ("question_field", "answer_field", "steps_field", "spaced_punctuation", "row_format", "prompt_rows")
DEFAULT_N_EVAL = 500  # eval questions a synthetic train split leaves out when n_eval is not given
_EVAL_SPLITS = ("eval", "validation", "valid", "test")
_FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet", ".csv")


def split_names(split: str) -> list[str]:
    """Split names to try, in order: an evaluation alias also tries the others (GSM8K and MATH-500 call it `test`)."""
    return [split] + [s for s in _EVAL_SPLITS if s != split] if split in _EVAL_SPLITS else [split]


def load_examples(source: PathLikeStr, split: str | None = None, **kw: Any) -> list[Example]:
    """Examples from a synthetic task name, a local file or directory, or a hub dataset id.

    - Task name (`icot_mult`, `chain_sum`, `prosqa_like`): `n=` examples from `seed=` (default 0) with difficulty
      knobs as keywords. The eval split (`split="eval"`, or validation/valid/test) is the first `n_eval=` (or `n=`)
      draws of the seed; the train split (`split="train"`) is `n_train=` (or `n=`) further draws whose questions
      are not among the first `n_eval` (default 500), so train and eval never share a question; `exclude=`
      (questions, e.g. a real validation file's) keeps those out of the train split too.
    - File: `.txt` iCoT lines, `.json` Coconut list, `.jsonl`/`.parquet`/`.csv` rows with `question_field`,
      `answer_field`, `steps_field` (defaults question/answer/steps). A directory with `split` given is searched
      for `{split}.{txt,json,jsonl,parquet,csv}`, else handed to `datasets.load_dataset`.
    - Anything else: `datasets.load_dataset(source, config_name, split=split or "train")` with the same columns
      (`config_name=` is only used here, e.g. `"main"` for `openai/gsm8k`). An evaluation split name also tries
      the other names for it (`test` for GSM8K and MATH-500).
    - Rows of GSM8K, MATH/MATH-500 and DAPO-Math are recognised by their columns (`row_format="auto"`) or named
      with `row_format=` (`latentrl.data.formats`); `math_verify_reward` checks their answers.

    For files and hub datasets `n=` keeps the first `n` examples and `seed=` is ignored (rows are read in order),
    so one call works for every kind of source.

    Rows in TRL's prompt format (a `prompt` column, no `question`) have no answer layout: they raise a
    `DataFormatError` pointing to `load_rows`, which RL training uses.
    """
    return _load(source, split, prompt_rows=False, **kw)


def load_rows(source: PathLikeStr, split: str | None = None, **kw: Any) -> list[Example | dict[str, Any]]:
    """What the RL trainer reads: `load_examples`, except that rows in TRL's standard prompt format stay TRL rows.

    A row with a `prompt` column and no `question` (`row_format="auto"`, or `row_format="prompt"`) comes back as a
    dict: `prompt` is a non-empty text or a list of chat messages (`role`/`content`), every other column is kept
    and reaches the reward functions as a keyword argument, as in TRL's GRPOTrainer. Other sources give `Example`s.
    """
    return _load(source, split, prompt_rows=True, **kw)


def _load(source: PathLikeStr, split: str | None, prompt_rows: bool, **kw: Any) -> list[Any]:
    source = os.fspath(source)
    config_name = kw.pop("config_name", None)  # a hub dataset's configuration; meaningless for other sources
    if source in TASKS:
        return _load_synthetic(source, split, **kw)
    n = kw.pop("n", None)
    kw.pop("seed", None)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be a non-negative int or None, got {n!r}")
    if prompt_rows:
        kw["prompt_rows"] = True
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = [path / f"{name}{suffix}" for name in split_names(split or "train") for suffix in _FILE_SUFFIXES]
        file = next((c for c in candidates if c.is_file()), None)
        examples = _load_file(file, **kw) if file else _load_with_datasets(str(path), split, config_name, **kw)
    elif path.suffix.lower() in _FILE_SUFFIXES or path.exists():
        examples = _load_file(path, **kw)
    else:
        _refuse_what_is_no_hub_id(source)
        examples = _load_with_datasets(source, split, config_name, **kw)
    return examples if n is None else examples[:n]


def _refuse_what_is_no_hub_id(source: str) -> None:
    """Fail at once, instead of after the hub client's retries, for a source that cannot be a hub dataset id: a
    path (absolute, relative with ./ or ~, or with more than one '/'), or a near-miss of a task name."""
    if source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1:
        raise FileNotFoundError(errno.ENOENT, "no such file or folder (and a hub dataset id is owner/name)", source)
    close = difflib.get_close_matches(source, TASKS, n=1, cutoff=0.8)
    if close and "/" not in source:
        raise ValueError(f"unknown dataset {source!r} (did you mean {close[0]!r}?): not a task "
                         f"({', '.join(sorted(TASKS))}) nor an existing file; a hub dataset of that name needs its "
                         "owner: owner/name")


def _load_synthetic(
    task: str,
    split: str | None,
    *,
    n: int | None = None,
    n_train: int | None = None,
    n_eval: int | None = None,
    seed: int = 0,
    exclude: Iterable[str] | None = None,
    **knobs: Any,
) -> list[Example]:
    if exclude is not None and split != "train":
        raise ValueError(f"load_examples({task!r}): exclude= applies to the 'train' split only, not {split!r}")
    if split is None:
        if n is None:
            raise ValueError(f"load_examples({task!r}) needs n= (number of examples)")
        return make_examples(task, n, seed, **knobs)
    if split == "train":
        count = n_train if n_train is not None else n
        if count is None:
            raise ValueError(f"load_examples({task!r}, 'train') needs n_train= (or n=)")
        n_excluded = DEFAULT_N_EVAL if n_eval is None else n_eval
        return train_eval_split(task, count, n_excluded, seed, exclude=exclude or (), **knobs)[0]
    if split in _EVAL_SPLITS:
        count = n_eval if n_eval is not None else n
        if count is None:
            raise ValueError(f"load_examples({task!r}, {split!r}) needs n_eval= (or n=)")
        return make_examples(task, count, seed, **knobs)
    raise ValueError(f"unknown split {split!r} for synthetic task {task!r}; use None, 'train' or one of {_EVAL_SPLITS}")


def _field_kw(kw: Mapping[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(kw) - set(_FIELD_KEYS))
    if unknown:
        raise TypeError(f"unexpected options {unknown} for {source}; allowed: {', '.join(_FIELD_KEYS)}")
    return dict(kw)


def _load_file(path: Path, **kw: Any) -> list[Example]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        kw.pop("prompt_rows", None)  # iCoT lines are question/answer rows
        if kw:
            raise TypeError(f"iCoT text files take no options, got {sorted(kw)}")
        return load_icot(path)
    fields = _field_kw(kw, str(path))
    if suffix == ".json":
        return _load_json_list(path, **fields)
    if suffix == ".jsonl":
        return load_jsonl(path, **fields)
    if suffix in (".parquet", ".csv"):
        return load_table(path, **fields)
    _existing_file(path)
    raise ValueError(f"don't know how to read {path}: expected one of {', '.join(_FILE_SUFFIXES)}")


def _load_with_datasets(source: str, split: str | None, config_name: str | None = None, **kw: Any) -> list[Example]:
    """A hub dataset id, or a local directory `datasets` can read."""
    import datasets

    fields = _field_kw(kw, source)
    folder = Path(source)
    if folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
        return _rows_to_examples(_saved_to_disk(folder, split), source, **fields)
    table, error = None, None
    for name in split_names(split or "train"):
        try:
            table = datasets.load_dataset(source, config_name, split=name, **_fresh_if_local(source))
            break
        except Exception as e:  # datasets: `Unknown split "eval". Should be one of ['train', 'test'].`
            error = e
            if "unknown split" not in str(e).lower():
                break
    if table is None:
        if folder.is_dir():
            files = ", ".join(sorted(f.name for f in folder.iterdir() if f.suffix.lower() in _FILE_SUFFIXES))
            holds = f" (it holds {files}: name the file, or the split it is)" if files else ""
            raise ValueError(
                f"could not load the folder {source!r} for split {split or 'train'!r}: no "
                f"{'/'.join(split_names(split or 'train'))} file ({', '.join(_FILE_SUFFIXES)}) in it{holds}, and "
                f"datasets.load_dataset failed: {type(error).__name__}: {error}") from error
        raise ValueError(
            f"could not load {source!r}: it is not a synthetic task ({', '.join(sorted(TASKS))}), not an existing "
            f"file, and datasets.load_dataset failed: {type(error).__name__}: {error}"
        ) from error
    return _rows_to_examples(table, source, **fields)


def _saved_to_disk(folder: Path, split: str | None) -> Any:
    """A folder written by `Dataset.save_to_disk` (the rows, whatever `split`) or `DatasetDict.save_to_disk` (the
    split, an evaluation alias trying the others), read with `datasets.load_from_disk`."""
    import datasets

    try:
        saved = datasets.load_from_disk(str(folder))
    except Exception as e:
        raise ValueError(f"could not read {str(folder)!r}, a folder saved with save_to_disk: "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(saved, datasets.DatasetDict):
        return saved
    name = next((n for n in split_names(split or "train") if n in saved), None)
    if name is None:
        raise ValueError(f"{str(folder)!r} has no split {split or 'train'!r}; its splits: {', '.join(saved)}")
    return saved[name]


def _existing_file(path: PathLikeStr) -> Path:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(errno.ENOENT, "data file not found", str(file))
    return file
