"""Row formats of the public math datasets, mapped onto the canonical `question` / `answer` / `steps` row.

The loaders (`latentrl.data.loaders`) read files and hub datasets; this module only knows what a row of each
well-known dataset looks like, so `load_examples("HuggingFaceH4/MATH-500", split="test")` needs no column options:

- `gsm8k` (openai/gsm8k): `question`, `answer` = `"reasoning lines\\n#### 42"` — already canonical.
- `math` (MATH, MATH-500, competition_math): `problem`, `solution` with a final `\\boxed{...}`, and an `answer`
  column in MATH-500. The answer is that column when present, else the last `\\boxed{}` of the solution; the
  solution's lines become the steps.
- `dapo_math` (BytedTsinghua-SIA/DAPO-Math-17k and verl-style RL parquet files): `prompt` = a list of chat
  messages (the question is the last user message), `reward_model` = `{"ground_truth": ..., "style": "rule"}`.

- `prompt` (TRL's standard prompt-only format): `prompt` = a text or a list of chat messages (`role`/`content`),
  any other columns kept for the reward functions. It has no question/answer layout, so it is not mapped onto
  one: `load_rows` keeps such rows as TRL-style dict rows for the RL trainer.

`auto` (the default) recognises each of these by its columns and leaves any other row as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from latentrl.rewards import last_boxed

RowAdapter = Callable[[Mapping[str, Any]], dict[str, Any]]


class RowFormatError(ValueError):
    """A row lacks what its format needs; the loader adds the file and row to the message."""


def _require(row: Mapping[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in row]
    if missing:
        raise RowFormatError(f"missing field {missing[0]!r} (fields: {', '.join(map(str, row))})")


def _canonical(row: Mapping[str, Any]) -> dict[str, Any]:
    return dict(row)


def _math(row: Mapping[str, Any]) -> dict[str, Any]:
    _require(row, "problem")
    solution = row.get("solution")
    answer = row.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        if not isinstance(solution, str):
            raise RowFormatError("a MATH row needs an 'answer' field or a 'solution' with a final \\boxed{...}")
        answer = last_boxed(solution)
        if answer is None:
            raise RowFormatError("the 'solution' has no complete \\boxed{...} to take the answer from")
    out = {k: v for k, v in row.items() if k not in ("problem", "answer", "solution")}
    out["question"], out["answer"] = row["problem"], answer
    out["steps"] = [line.strip() for line in solution.splitlines() if line.strip()] if isinstance(solution, str) else []
    if isinstance(solution, str):
        out["solution"] = solution
    return out


def _dapo_math(row: Mapping[str, Any]) -> dict[str, Any]:
    _require(row, "prompt", "reward_model")
    prompt, reward_model = row["prompt"], row["reward_model"]
    if isinstance(prompt, str):
        question = prompt
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, Mapping) for m in prompt):
        users = [m for m in prompt if m.get("role") == "user"] or list(prompt)
        question = users[-1].get("content")
    else:
        raise RowFormatError(f"field 'prompt' must be a string or a list of chat messages, got {prompt!r:.80}")
    if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
        raise RowFormatError(f"field 'reward_model' must be an object with 'ground_truth', got {reward_model!r:.80}")
    out = {k: v for k, v in row.items() if k not in ("prompt", "reward_model")}
    out["question"], out["answer"] = question, reward_model["ground_truth"]
    if not isinstance(prompt, str):
        out["messages"] = list(prompt)  # kept for chat-template prompts and reward functions
    return out


def is_message_list(value: Any) -> bool:
    """A chat conversation: a non-empty list of `{"role": str, "content": str}` messages (TRL's conversational)."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value))


def prompt_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A TRL prompt row, checked: `prompt` is a non-empty text or a list of chat messages; other columns as they are."""
    _require(row, "prompt")
    prompt = row["prompt"]
    if isinstance(prompt, str) and prompt.strip():
        return dict(row)
    if is_message_list(prompt):
        return {**row, "prompt": [dict(m) for m in prompt]}
    raise RowFormatError(f"field 'prompt' must be a non-empty string or a list of chat messages with 'role' and "
                         f"'content' strings (TRL's format), got {prompt!r:.80}")


ROW_FORMATS: dict[str, RowAdapter] = {"canonical": _canonical, "gsm8k": _canonical, "math": _math,
                                      "dapo_math": _dapo_math}
PROMPT_FORMAT = "prompt"
FORMAT_NAMES = ("auto", *ROW_FORMATS, PROMPT_FORMAT)


def detect_format(row: Mapping[str, Any]) -> str:
    """The format of one row, by its columns (`canonical` when it is none of the known datasets)."""
    if "question" in row:
        return "canonical"
    solution = row.get("solution")
    if "problem" in row and ("answer" in row or (isinstance(solution, str) and "\\boxed{" in solution)):
        return "math"
    if "prompt" in row and "reward_model" in row:
        return "dapo_math"
    if "prompt" in row:
        return PROMPT_FORMAT
    return "canonical"


def adapt_row(row: Mapping[str, Any], row_format: str = "auto") -> dict[str, Any]:
    """`row` in the canonical question/answer/steps layout. Raises RowFormatError when it does not fit (a TRL prompt
    row has no such layout: see `prompt_row`)."""
    if row_format not in FORMAT_NAMES:
        raise ValueError(f"unknown dataset format {row_format!r}; choose one of {', '.join(FORMAT_NAMES)}")
    name = detect_format(row) if row_format == "auto" else row_format
    if name == PROMPT_FORMAT:
        raise RowFormatError("this row is in TRL's prompt format (a 'prompt' column and no 'question'): RL training "
                             "reads it (`latentrl train`, `load_rows`), but this needs question/answer rows")
    return ROW_FORMATS[name](row)
