"""Answer extraction and reward functions with TRL's signature, and the batch scorer that combines them.

A reward function is `f(prompts, completions, **columns) -> list[float | None]`, exactly as TRL's GRPOTrainer
calls it: `columns` are the dataset's columns for the batch (here usually `answer=[...]`), and `None` means "does
not apply to this row". So any TRL reward function works here and ours work in TRL. Completions follow the
data format (`steps #### answer`); the answer is what follows the last `####`, or a `\\boxed{...}` as fallback
for models trained on MATH-style text.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import numbers
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

RewardFunc = Callable[..., list[float | None]]

ANSWER_MARK = "####"
# End-of-text markers a decoded completion may still contain; the answer stops at the first one.
_END_MARKERS = re.compile(r"<eos>|<pad>|</s>|<\|[A-Za-z0-9_]+\|>")
_BOXED = "\\boxed{"
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_DIGIT_SEQUENCE = re.compile(r"\d(?: \d)+")  # iCoT answers: one digit per word
_MARK = re.compile(r"(?<!#)####(?!#)")  # GSM8K's answer mark, not part of a longer run of `#`
_ANSWER_LINE = re.compile(r"^[ \t*]*Answer:[ \t*]*(.+?)[ \t*]*$", re.IGNORECASE | re.MULTILINE)  # DAPO's prompt
_SPACED_BOX = re.compile(r"\\boxed\s+\{")  # `\boxed {5}`
_THIN_THOUSANDS = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")  # LaTeX's `1\,000`

# ---------------------------------------------------------------------------------------------------------------
# Extraction and normalisation
# ---------------------------------------------------------------------------------------------------------------


def _completion_text(completion: Any) -> str:
    """Plain text of a completion; conversational completions (lists of messages) give the last content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    return "" if completion is None else str(completion)


def _marked_answer(text: str) -> str | None:
    """The text after the first `####`, up to the next `####`, an end marker or the end of its line; None if absent
    or empty. The first mark is the model's commitment: with the last one, a wrong answer followed by a right one
    (`#### 3 #### 5`) would score as right, and listing candidates would be rewarded. A run of five or more `#`
    (a deeper markdown heading) is not the mark."""
    found = _MARK.search(text)
    if found is None:
        return None
    after = text[found.end() :].split(ANSWER_MARK, 1)[0]
    end = _END_MARKERS.search(after)
    if end:
        after = after[: end.start()]
    after = after.lstrip()
    after = after.split("\n", 1)[0]
    answer = " ".join(after.split())
    return answer or None


def _brace_end(text: str, open_at: int) -> int:
    """Index just past the `}` that closes the `{` at `open_at`, or -1 if it never closes."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return -1


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` with balanced braces; None if there is none (or it never closes)."""
    start = text.rfind(_BOXED)
    while start >= 0:
        end = _brace_end(text, start + len(_BOXED) - 1)
        if end > 0:
            return " ".join(text[start + len(_BOXED) : end - 1].split()) or None
        start = text.rfind(_BOXED, 0, start)
    return None


def _answer_line(text: str) -> str | None:
    """The last `Answer: ...` line (the form DAPO-Math's prompt asks for), or None."""
    found = _ANSWER_LINE.findall(text)
    return (" ".join(found[-1].split()) or None) if found else None


def extract_answer(text: str | None) -> str | None:
    """The final answer in `text`: after the first `####`, else the last `\\boxed{}`, else the last `Answer:` line
    (DAPO-Math's format); None if none of them. A `####` that starts a line of words (a markdown heading, `#### Step
    1: ...`) gives way to a `\\boxed{}` written after it."""
    if text is None:
        return None
    text = _SPACED_BOX.sub(lambda m: _BOXED, _completion_text(text))
    marked = _marked_answer(text)
    if marked is not None and marked[0].isalpha():
        mark = _MARK.search(text)
        if _BOXED in text[mark.end() :] and (mark.start() == 0 or text[mark.start() - 1] == "\n"):
            marked = None  # a heading, not an answer: the box is the answer
    return marked or last_boxed(text) or _answer_line(text)


def normalize_answer(s: str) -> str:
    """Canonical answer text: collapse whitespace, unwrap `\\boxed{}`/`$...$`/markdown bold `**...**`, drop a
    trailing `.` and thousands separators (`,`, LaTeX's `\\,`), write a Unicode minus `−` as `-`. iCoT digit
    sequences (`5 5 6 0`) keep their spaces, so they compare digit by digit."""
    s = " ".join(str(s).replace("\u2212", "-").split())
    while True:
        before = s
        if s.startswith(_BOXED) and _brace_end(s, len(_BOXED) - 1) == len(s):
            s = s[len(_BOXED) : -1].strip()
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s[1:-1].strip()
        if len(s) >= 4 and s.startswith("**") and s.endswith("**"):
            s = s[2:-2].strip()
        s = s.rstrip(".").rstrip()
        if s == before:
            return _THOUSANDS.sub("", _THIN_THOUSANDS.sub("", s))


def _as_number(s: str) -> float | None:
    """`s` as a number when the whole answer is one (leading `$` and trailing `%` allowed), else None."""
    s = s.strip()
    s = "-" + s[2:] if s.startswith("-$") else s  # `-$5`
    s = s[1:] if s.startswith("$") else s
    s = s[:-1] if s.endswith("%") else s
    if not _NUMBER.fullmatch(s):
        return None
    try:
        return float(s)
    except ValueError:
        return None


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """Exact match after normalisation, or numeric equality when both are plain numbers (`42.0` == `42`)."""
    if predicted is None or gold is None:
        return False
    p, g = normalize_answer(predicted), normalize_answer(gold)
    if p == g:
        return True
    if _DIGIT_SEQUENCE.fullmatch(p) or _DIGIT_SEQUENCE.fullmatch(g):
        return False  # digit-by-digit answers only match exactly
    pn, gn = _as_number(p), _as_number(g)
    return pn is not None and gn is not None and math.isclose(pn, gn, rel_tol=1e-9, abs_tol=1e-9)


def _gold_text(gold: Any) -> str | None:
    """A gold answer column value; GSM8K-style gold (`reasoning #### 42`) gives `42`."""
    if gold is None:
        return None
    gold = str(gold)
    return (_marked_answer(gold) or gold) if ANSWER_MARK in gold else gold


# ---------------------------------------------------------------------------------------------------------------
# Calling reward functions on dataset rows
# ---------------------------------------------------------------------------------------------------------------


def reward_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The rows' non-prompt columns as the keyword lists a TRL reward function receives (`answer=[...]`, ...)."""
    return {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}


def checked_rewards(func: Callable[..., Any], prompts: Sequence[Any], completions: Sequence[str],
                    columns: Mapping[str, list[Any]], extra: Mapping[str, Any] | None = None) -> list[float]:
    """`func`'s rewards for the completions as floats, NaN where it returned None; a RewardFunctionError naming
    `func` when it raises or returns anything but one finite number (or None) per completion. `extra`: TRL's
    further keyword arguments (`completion_ids`, `trainer_state`), passed to a function that takes them by name or
    through **kwargs (so a function written without them still works)."""
    name, n = reward_func_name(func), len(completions)
    more = {k: v for k, v in (extra or {}).items() if accepts_keyword(func, k)}
    try:
        out = func(prompts=list(prompts), completions=list(completions), **columns, **more)
    except Exception as e:
        raise RewardFunctionError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
    if isinstance(out, torch.Tensor):
        out = out.tolist()
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
        raise RewardFunctionError(
            f"reward function {name!r} must return a list of {n} floats or None, got {type(out).__name__}"
        )
    if len(out) != n:
        raise RewardFunctionError(f"reward function {name!r} returned {len(out)} rewards for {n} completions")
    rewards = []
    for i, value in enumerate(out):
        try:
            reward = _as_reward(value)
        except TypeError as e:
            raise RewardFunctionError(f"reward function {name!r} returned a bad reward at index {i}: {e}") from e
        if value is not None and not math.isfinite(reward):  # NaN stands for None only when None was returned
            raise RewardFunctionError(
                f"reward function {name!r} returned {reward} at row {i} of the batch (prompt {_excerpt(prompts[i])}, "
                f"completion {_excerpt(completions[i])}); rewards must be finite numbers, or None where the "
                "function does not apply")
        rewards.append(reward)
    return rewards


def binary_correctness(func: Callable[..., list[float | None]], prompts: Sequence[Any], completions: Sequence[str],
                       **columns: list[Any]) -> list[float]:
    """1.0 where `func`'s reward is > 0, else 0.0 (None counts as wrong): a correctness label from any reward."""
    return [float(s > 0) for s in checked_rewards(func, prompts, completions, columns)]  # NaN > 0 is False


def correctness_labels(func: Callable[..., list[float | None]], rows: Sequence[Mapping[str, Any]],
                       completions: Sequence[str], device=None) -> torch.Tensor:
    """(N,) float 0/1 `binary_correctness` of the completions of `rows`."""
    labels = binary_correctness(func, [r["prompt"] for r in rows], completions, **reward_columns(rows))
    return torch.tensor(labels, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------------------------------------
# Reward functions (TRL signature)
# ---------------------------------------------------------------------------------------------------------------


def correctness_reward(
    prompts: list[Any], completions: list[Any], answer: list[Any], **kwargs: Any
) -> list[float | None]:
    """1.0 if the extracted answer equals the gold `answer` column (after normalisation), else 0.0."""
    return [float(answers_match(extract_answer(c), _gold_text(g))) for c, g in zip(completions, answer, strict=True)]


def format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 iff the completion has exactly one `####` followed by a non-empty answer."""
    out: list[float | None] = []
    for c in completions:
        text = _completion_text(c)
        out.append(float(len(_MARK.findall(text)) == 1 and _marked_answer(text) is not None))
    return out


def hrpo_reward(
    prompts: list[Any], completions: list[Any], answer: list[Any], **kwargs: Any
) -> list[float | None]:
    """HRPO's outcome reward: 1.0 iff `####` appears exactly once and the answer after it is correct."""
    out: list[float | None] = []
    for c, g in zip(completions, answer, strict=True):
        text = _completion_text(c)
        ok = len(_MARK.findall(text)) == 1 and answers_match(_marked_answer(text), _gold_text(g))
        out.append(float(ok))
    return out


#: a LaTeX command (`\\sqrt`, `\\frac`, ...) and a word of two or more letters: an extracted answer with a word
#: outside LaTeX commands is prose ("10 dollars", "True"), which math mode would read as a product of symbols
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")
#: a LaTeX environment's name (`\\begin{pmatrix}`): not a word of prose
_ENVIRONMENT = re.compile(r"\\(?:begin|end)\s*\{[A-Za-z*]*\}")
#: text set in a formula (`3 \\text{ or } 5`, `10\\text{ cm}`): words
_TEXT_ARG = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox|operatorname)\s*\{[^{}]*\}")
_SCRIPT = re.compile(r"[\^_]\s*(?:\{[^{}]*\}|\S)")  # an exponent or a subscript
_SPACED_NUMBERS = re.compile(rf"\s*{_NUMBER.pattern}(?:\s+{_NUMBER.pattern})+\s*")


def _without_latex(text: str) -> str:
    """`text` without LaTeX commands and environment names, `\\text{...}` and the like standing as a word."""
    return _LATEX_COMMAND.sub(" ", _TEXT_ARG.sub(" text ", _ENVIRONMENT.sub(" ", text)))


def _prose_words(text: str) -> bool:
    """Whether `text` holds a word outside LaTeX commands and environment names (`\\text{...}` counts as words)."""
    return bool(_WORD.search(_without_latex(text)))


def _hedged(text: str) -> bool:
    """A predicted answer in prose that names more than one number (`7 hours, not 9`, `3 or 5`, `12 (15 would be
    wrong)`): math_verify's default extraction would take the last, so listing candidates would be rewarded.
    Numbers joined by symbols only (`1/2 cup`, `\\frac{1}{2} cup`, `$1,234.00`) are one; exponents and subscripts
    (`10\\text{ cm}^2`) are not numbers of their own."""
    if not _prose_words(text):
        return False
    plain = _SCRIPT.sub(" ", _without_latex(text))
    return sum(bool(_NUMBER.search(part)) for part in _WORD.split(plain)) > 1


def _math_parse(text: str) -> list[Any]:
    """`math_verify.parse` of an already extracted answer, never raising. A formula (no word outside LaTeX commands)
    is parsed in math mode, `$...$`: math_verify's default extraction would take the last number of `x^2 + 1`
    (1) or `(3, 5)` (5) and nothing of `\\$18.90`. Prose, or a formula math mode cannot read, gets the default
    extraction, then (bare LaTeX with `\\`, `^`, `_` or `{`) math mode. The parser's signal-based timeout only works
    in the main thread, so other threads parse without one."""
    from math_verify import parse

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    text = _THIN_THOUSANDS.sub("", text.replace("\u2212", "-")).strip()
    if len(text) >= 4 and text.startswith("**") and text.endswith("**"):
        text = text[2:-2].strip()  # markdown bold
    text = re.sub(r"^-\$(?=\d)", "-", text)  # `-$5`: a currency sign, not a math delimiter
    if _SPACED_NUMBERS.fullmatch(text):
        return []  # `2 3` is two numbers, not their sum (math mode) or the last (default extraction)
    try:
        # (an escaped dollar, `\\$18.90`, is a currency sign, not a math-mode delimiter)
        formula = "$" not in text.replace("\\$", "") and not _prose_words(text)
        parsed = parse(f"${text}$", parsing_timeout=timeout) if formula else []
        if not parsed:
            parsed = parse(text, parsing_timeout=timeout)
        if not parsed and "$" not in text and any(ch in text for ch in "\\^_{"):
            parsed = parse(f"${text}$", parsing_timeout=timeout)
        return list(parsed)
    except Exception:
        return []


def _math_equal(predicted: str | None, gold: str | None) -> bool:
    from math_verify import verify

    if predicted is None or gold is None:
        return False
    if _DIGIT_SEQUENCE.fullmatch(normalize_answer(gold)):
        return answers_match(predicted, gold)  # math_verify would read `5 5 6 0` as the number 0
    gold_parsed = _math_parse(gold)
    if not gold_parsed:  # not mathematics (e.g. "Tom is a lempus ."): exact match
        return answers_match(predicted, gold)
    if _hedged(predicted):
        return False
    pred_parsed = _math_parse(predicted)
    if not pred_parsed:
        return False
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:
        return False


def math_verify_reward(
    prompts: list[Any], completions: list[Any], answer: list[Any], **kwargs: Any
) -> list[float | None]:
    """1.0 if `math_verify` finds the extracted answer (`####`, `\\boxed{}` or `Answer:`) equivalent to the gold; garbage
    gives 0.0, never an exception."""
    return [float(_math_equal(extract_answer(c), _gold_text(g))) for c, g in zip(completions, answer, strict=True)]


REWARD_FUNCS: dict[str, RewardFunc] = {
    "correctness": correctness_reward,
    "format": format_reward,
    "hrpo": hrpo_reward,
    "math_verify": math_verify_reward,
}


def answer_check(reward_funcs: Sequence[Any]) -> RewardFunc:
    """What counts as a right answer when a run is scored (eval Pass@1, the thought-swap check): `math_verify`'s
    equivalence when the run trains on it (`\\boxed{0.5}` is right for `\\frac{1}{2}`), else `correctness`'s exact
    match after normalisation. Shaped or custom rewards never decide it: a format bonus is not a right answer."""
    uses_math = any(f == "math_verify" or f is math_verify_reward for f in reward_funcs)
    return math_verify_reward if uses_math else correctness_reward


class RewardLookupError(ValueError):
    """A `reward_funcs` entry that names no usable function (unknown name, failed import, wrong signature)."""


def get_reward_funcs(names: Sequence[str]) -> list[RewardFunc]:
    """The reward functions called `names`, in order: registered names or dotted import paths (see
    `resolve_reward_func`)."""
    if isinstance(names, str):
        names = [names]
    return [resolve_reward_func(n) for n in names]


def resolve_reward_func(name: str) -> RewardFunc:
    """A registered reward name (`correctness`), or a dotted import path `module.function` as in TRL's scripts
    (`reward_funcs: [my_rewards.length_reward]`), imported from the working directory or `PYTHONPATH`.

    Every way this can fail is a `RewardLookupError` naming the entry and the cause, so the CLI can report it
    before it loads a model."""
    if name in REWARD_FUNCS:
        return REWARD_FUNCS[name]
    module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        close = difflib.get_close_matches(name, REWARD_FUNCS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RewardLookupError(
            f"unknown reward function {name!r}{hint}: give a registered name ({', '.join(sorted(REWARD_FUNCS))}) "
            "or a dotted import path module.function importable from the working directory or PYTHONPATH")
    module = _import_reward_module(module_name, name)
    if not hasattr(module, attr):
        public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                  and getattr(v, "__module__", None) == module.__name__]
        close = difflib.get_close_matches(attr, public, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RewardLookupError(
            f"reward function {name!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no attribute "
            f"{attr!r}{hint}; its functions: {', '.join(public) or 'none'}")
    func = getattr(module, attr)
    _check_reward_signature(func, name)
    return func


def _import_reward_module(module_name: str, entry: str) -> Any:
    """Import `module_name` with the working directory on `sys.path` (as TRL's scripts do)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise RewardLookupError(
                f"reward function {entry!r}: no module named {e.name!r} in the working directory ({cwd}) or on "
                "PYTHONPATH") from e
        raise RewardLookupError(f"reward function {entry!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise RewardLookupError(
            f"reward function {entry!r}: importing {module_name!r} raised {type(e).__name__}: {e}") from e


def _check_reward_signature(func: Any, entry: str) -> None:
    """Refuse what cannot be called as TRL calls a reward: `f(prompts=..., completions=..., **columns)`."""
    if inspect.isclass(func) or not callable(func):
        what = "a class" if inspect.isclass(func) else f"{_article(type(func).__name__)} {type(func).__name__}"
        raise RewardLookupError(
            f"reward function {entry!r} is {what}, not a function: a reward is called as "
            "f(prompts, completions, **columns) -> list[float | None]")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have no signature: let the first call decide
        return
    try:
        signature.bind_partial(prompts=[], completions=[])  # dataset columns (answer=...) may be required too
    except TypeError as e:
        raise RewardLookupError(
            f"reward function {entry!r} cannot be called as f(prompts=..., completions=..., **columns) (TRL's "
            f"signature; dataset columns arrive as keyword arguments): {e}") from None


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------------------------
# Batch scoring
# ---------------------------------------------------------------------------------------------------------------


class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned something that is not one number-or-None per completion."""


def reward_func_name(func: Callable[..., Any]) -> str:
    """The name used in errors and metrics: `__name__`, else the wrapped function's (partials), else the type."""
    name = getattr(func, "__name__", None) or getattr(getattr(func, "func", None), "__name__", None)
    return name or type(func).__name__


def accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    """Whether `func` takes a keyword argument `name` (by name or through **kwargs); cached, as it runs per batch."""
    try:
        return _accepts_cached(func, name)
    except TypeError:  # an unhashable callable object
        return _takes_keyword(func, name)


@functools.lru_cache(maxsize=256)
def _accepts_cached(func: Callable[..., Any], name: str) -> bool:
    return _takes_keyword(func, name)


def _takes_keyword(func: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass only what every reward takes
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in params)


def reward_metric_names(funcs: Sequence[Callable[..., Any]]) -> list[str]:
    """One distinct name per reward function for its `rewards/<name>/mean` metric: `reward_func_name`, with
    `_2`, `_3`, ... on repeats (two lambdas must not share, and overwrite, one metric)."""
    names, seen = [], {}
    for f in funcs:
        base = reward_func_name(f)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def _as_reward(value: Any) -> float:
    """A returned value as a float (None -> NaN, as TRL does); raises TypeError for anything else."""
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value.item())
    if isinstance(value, numbers.Real):  # bool, int, float and numpy scalars
        return float(value)
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a number or None")


def _excerpt(value: Any, limit: int = 60) -> str:
    """A short quoted one-line excerpt of a prompt or completion for error messages."""
    text = " ".join(_completion_text(value).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def compute_rewards(
    funcs: Sequence[RewardFunc],
    prompts: list[Any],
    completions: list[Any],
    columns: Mapping[str, list[Any]] | None = None,
    weights: Sequence[float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score a batch: `(per_func (N, F) float32, NaN where a function returned None; total (N,))`.

    `total = nansum(weights * per_func)` over functions, as in TRL. Errors name the offending function. A row
    where every function returned None has no reward at all, which would silently become 0 in TRL; here it
    raises, naming the functions.
    """
    columns = dict(columns or {})
    n, n_funcs = len(prompts), len(funcs)
    if len(completions) != n:
        raise ValueError(f"{len(completions)} completions for {n} prompts")
    for key, values in columns.items():
        if len(values) != n:
            raise ValueError(f"column {key!r} has {len(values)} values for {n} completions")
    if n_funcs == 0:
        raise ValueError("compute_rewards needs at least one reward function")
    w = torch.ones(n_funcs) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
    if w.shape != (n_funcs,):
        raise ValueError(f"{w.numel()} weights for {n_funcs} reward functions")

    per_func = torch.empty(n, n_funcs, dtype=torch.float32)
    for j, func in enumerate(funcs):
        per_func[:, j] = torch.tensor(checked_rewards(func, prompts, completions, columns, extra), dtype=torch.float32)

    none_rows = torch.isnan(per_func).all(dim=1).nonzero().flatten().tolist()
    if none_rows:
        names = ", ".join(reward_func_name(f) for f in funcs)
        shown = none_rows[:10] + (["..."] if len(none_rows) > 10 else [])
        raise RewardFunctionError(
            f"every reward function ({names}) returned None for {len(none_rows)} completion(s) at indices {shown}; "
            "at least one must score each completion"
        )
    total = torch.nansum(per_func * w.unsqueeze(0), dim=1)
    return per_func, total
