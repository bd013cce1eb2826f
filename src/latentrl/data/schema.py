"""The one example schema shared by synthetic tasks and real-data loaders, and the text formats trainers use.

Every data source (generated tasks, iCoT text files, Coconut JSON, GSM8K-style tables) becomes a list of
`Example`s, and every trainer turns an `Example` into text with the same three functions, so a model trained on
one source can be evaluated on another. The layout mirrors the iCoT line format `question||steps #### answer`:
the prompt ends with `||`, the chain of thought follows, and the final answer comes after `####`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

PROMPT_END = "||"
ANSWER_MARK = "####"


@dataclass
class Example:
    """A question, its reasoning steps and its final answer.

    `meta` holds provenance and auxiliary data (source file and line, ProsQA graph, factors, ...). It is left out
    of equality on purpose: two examples are equal when a model would see the same text, so a generated example
    equals the same example loaded from a file.
    """

    question: str
    steps: list[str]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def format_prompt(ex: Example) -> str:
    """The prompt: the question followed by the end-of-question marker `||`."""
    return f"{ex.question} {PROMPT_END}"


def format_cot(ex: Example) -> str:
    """The completion with chain of thought: the steps, then `#### answer`."""
    return " " + " ".join(ex.steps) + f" {ANSWER_MARK} " + ex.answer


def format_no_cot(ex: Example) -> str:
    """The completion without chain of thought: only `#### answer`."""
    return f" {ANSWER_MARK} " + ex.answer


def format_icot_line(ex: Example) -> str:
    """One line of an iCoT-format text file (`question||steps #### answer`); `load_icot` reads it back."""
    return f"{ex.question}{PROMPT_END}{' '.join(ex.steps)} {ANSWER_MARK} {ex.answer}"


def to_record(ex: Example) -> dict[str, Any]:
    """A flat row for `datasets`/TRL-style trainers; reward functions read the `answer` column."""
    return {
        "prompt": format_prompt(ex),
        "completion": format_cot(ex),
        "completion_no_cot": format_no_cot(ex),
        "question": ex.question,
        "steps": list(ex.steps),
        "answer": ex.answer,
    }


def as_rows(data: Sequence[Example | dict[str, Any]], what: str = "dataset") -> list[dict[str, Any]]:
    """Accept `Example`s or TRL-style dict rows (with a non-empty `prompt` column); `what` names the data in errors
    (e.g. "the evaluation data")."""
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, (Example, Mapping)):
            raise ValueError(f"{what}: row {i} is a {type(item).__name__} ({item!r:.60}), not a dict row with a "
                             "'prompt' column (TRL's format, e.g. {'prompt': '2 + 3 =', 'answer': '5'}) or an Example")
        row = to_record(item) if isinstance(item, Example) else dict(item)
        if "prompt" not in row:
            raise ValueError(f"{what}: row {i} has no 'prompt' column (columns: {sorted(row)})")
        if isinstance(row["prompt"], str) and not row["prompt"].strip() or row["prompt"] in (None, [], ()):
            raise ValueError(f"{what}: row {i} has an empty prompt")
        rows.append(row)
    if not rows:
        raise ValueError(f"{what} is empty")
    return rows


class DataFormatError(ValueError):
    """A data file row that cannot be read; the message names the file, the row and what was wrong.

    `line` is a 1-based line number (text and JSON-lines files); `item` is a 0-based index into a JSON list or
    a table's rows.
    """

    def __init__(
        self, path: str | PathLike[str], problem: str, *, line: int | None = None, item: int | None = None
    ) -> None:
        self.path, self.problem, self.line, self.item = str(path), problem, line, item
        if line is not None:
            where = f"{self.path}, line {line}"
        elif item is not None:
            where = f"{self.path}, item {item} (0-based)"
        else:
            where = self.path
        super().__init__(f"{where}: {problem}")
