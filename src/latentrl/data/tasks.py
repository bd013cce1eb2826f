"""Deterministic synthetic reasoning tasks with a difficulty knob, written for the in-process word tokenizer.

Why synthetic tasks: no dataset hub is reachable on the build machines, and a tiny model trained from scratch can
learn these in minutes, with a large gap between chain-of-thought and no-CoT accuracy (design.md, "Models and
data on these machines") -- the gap latent reasoning has to close. All text is whitespace-separated words drawn
from digits, the tokenizer's built-in symbols and `task_vocabulary(task)`, so it round-trips through
`latentrl.tokenizer.build_word_tokenizer` with no unknown tokens.

Every generator draws from its own `random.Random(seed)`; the global RNG is never touched, so the same
`(task, n, seed, knobs)` always gives the same examples.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from latentrl.data.schema import Example

# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A synthetic task: default knobs, a knob checker, a one-example generator and its extra vocabulary."""

    name: str
    description: str
    defaults: Mapping[str, Any]
    check: Callable[..., None]  # (**knobs) -> None; raises ValueError on a bad value
    generate: Callable[..., Example]  # (rng, **knobs) -> Example
    vocabulary: tuple[str, ...] = ()
    draw: Callable[..., tuple[str, Any]] | None = None
    """(rng, **knobs) -> (question, choices): one problem's random choices (drawing from `rng` exactly what `generate`
    draws) and its question, without the chain; `build(choices, **knobs)` is then `generate`'s example. Optional: a
    cheap path for what needs only the questions, or only some of the examples (which problems a checkpoint trained
    on; a stream that skips most of its draws)."""
    build: Callable[..., Example] | None = None

    def question_of(self, rng: random.Random, **knobs: Any) -> str:
        return self.draw(rng, **knobs)[0] if self.draw is not None else self.generate(rng, **knobs).question


def _spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def _knobs(spec: TaskSpec, difficulty: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by `difficulty`, after checking names and values."""
    unknown = sorted(set(difficulty) - set(spec.defaults))
    if unknown:
        allowed = ", ".join(f"{k} (default {v!r})" for k, v in spec.defaults.items())
        raise ValueError(f"task {spec.name!r} has no knob {', '.join(map(repr, unknown))}; knobs: {allowed}")
    knobs = {**spec.defaults, **difficulty}
    spec.check(**knobs)
    return knobs


def make_examples(task: str, n: int, seed: int = 0, **difficulty: Any) -> list[Example]:
    """`n` examples of `task`, fully determined by `seed` and the difficulty knobs."""
    spec = _spec(task)
    knobs = _knobs(spec, difficulty)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = random.Random(seed)
    return [spec.generate(rng, **knobs) for _ in range(n)]


def task_vocabulary(task: str) -> list[str]:
    """The words `task` needs beyond the tokenizer's built-in digits and symbols."""
    return list(_spec(task).vocabulary)


def train_eval_split(
    task: str, n_train: int, n_eval: int, seed: int = 0, *, exclude: Iterable[str] = (), **difficulty: Any
) -> tuple[list[Example], list[Example]]:
    """Train and eval examples from one seeded stream, with no eval question (or `exclude`d one) in train.

    The eval set is the first `n_eval` draws, so it equals `make_examples(task, n_eval, seed, **difficulty)`;
    train continues the same stream and skips any question already in eval or in `exclude` (e.g. the questions
    of a real validation file). Train examples may repeat among themselves, as i.i.d. samples do.
    """
    spec = _spec(task)
    knobs = _knobs(spec, difficulty)
    exclude = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
    if spec.draw is not None and len(exclude) > n_train:
        # most draws may be excluded ones (RL prompts off an init's million training problems): write each draw's
        # question first and build the chain only for the draws kept
        def draw(rng: random.Random) -> Example | None:
            question, choices = spec.draw(rng, **knobs)
            return None if question in exclude else spec.build(choices, **knobs)
    else:
        def draw(rng: random.Random) -> Example | None:
            return spec.generate(rng, **knobs)
    return _split(task, knobs, n_train, n_eval, seed, exclude, lambda rng: spec.generate(rng, **knobs), draw,
                  lambda ex: ex.question)


def train_eval_questions(
    task: str, n_train: int, n_eval: int, seed: int = 0, *, exclude: Iterable[str] = (), **difficulty: Any
) -> tuple[list[str], list[str]]:
    """The questions of `train_eval_split(...)`'s train and eval sets, without building their chains (a million
    icot problems: seconds instead of ~30 s)."""
    spec = _spec(task)
    knobs = _knobs(spec, difficulty)
    make = functools.partial(spec.question_of, **knobs)
    return _split(task, knobs, n_train, n_eval, seed, exclude, make, make, lambda q: q)


def _split(task: str, knobs: dict[str, Any], n_train: int, n_eval: int, seed: int, exclude: Iterable[str],
           make: Callable[[random.Random], Any], draw: Callable[[random.Random], Any | None],
           question: Callable[[Any], str]) -> tuple[list, list]:
    """`train_eval_split`'s stream, for whatever `make` makes of each problem (an Example, or its question): the
    eval draws are `make`'s, the train draws `draw`'s (the same, or None for a draw it already found excluded)."""
    for name, value in (("n_train", n_train), ("n_eval", n_eval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    rng = random.Random(seed)
    eval_set = [make(rng) for _ in range(n_eval)]
    banned = {question(ex) for ex in eval_set} | set(exclude)
    train: list = []
    max_draws = 20 * n_train + 10_000 + len(banned)  # banned questions drawn first (same stream) are skipped
    draws = 0
    while len(train) < n_train:
        if draws >= max_draws:
            raise ValueError(
                f"task {task!r} with knobs {knobs} produced only {len(train)} of {n_train} train examples outside "
                f"the {len(banned)} banned questions in {draws} draws; the question space is too small for this "
                "split -- raise the difficulty or lower n_eval"
            )
        ex = draw(rng)
        draws += 1
        if ex is not None and question(ex) not in banned:  # None: a draw `draw` already found excluded
            train.append(ex)
    return train, eval_set


def _check_int(task: str, name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"task {task!r}: knob {name} must be an int {bound}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# icot_mult: multi-digit multiplication in the exact format of iCoT's {4,5}_by_{4,5}_mult files
# ---------------------------------------------------------------------------------------------------------------
# Format (read off the real files): numbers are written little-endian (least significant digit first), one digit
# per word. With A = digits of a and B = digits of b, step i (i = 0..B-1) is the partial product a * b_i * 10^i,
# zero-padded to A + 1 + i digits. Steps after the first start with `+`; steps strictly between the first and the
# last also show the running sum of partial products so far in `( ... )`, padded to A + 1 + i digits. The answer
# is the product padded to A + B digits. Example (2365 * 4347):
#   5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 ) + 0 0 0 0 6 4 9 0
#   #### 5 5 6 0 8 2 0 1


def _little_endian(value: int, width: int) -> str:
    """`value` as `width` space-separated digits, least significant first."""
    return " ".join(reversed(str(value).zfill(width)))


ICOT_CHAINS = ("icot", "partials", "columns", "columns_tens_first")
"""The chains `icot_mult` can write: iCoT's (partial products with running sums); the partial products alone
(`partials`: `+ PP` per multiplier digit, no running sum: steps that do not depend on one another, the answer adds
them up); or the partial products then the answer's column sums (`columns`: a last step `= S_0 S_1 ...`, S_k the
digits of column k added without carries, each written as a fixed number of digits, least significant first, so the
answer is S with the carries done). The column sums are the one place the chain states a sum's size, not only
its last digit: a digit (a sum mod 10) is uncorrelated with any proper subset of its addends, its tens digit is not.
`columns_tens_first` writes each column sum's digits most significant first, so the digit that every addend moves
(the size) comes before the one that only all of them together decide (docs/bench/icot_latent_init, "Why S_3")."""


def icot_mult_example(a: int, b: int, chain: str = "icot") -> Example:
    """The iCoT multiplication example for `a * b`; digit counts are those of `a` and `b`. `chain="partials"`
    drops the running sums from the steps; `chain="columns"` drops them and adds the column-sums step (see
    `ICOT_CHAINS`). The answer is the same in every chain."""
    if a <= 0 or b <= 0:
        raise ValueError(f"icot_mult factors must be positive, got {a} and {b}")
    if chain not in ICOT_CHAINS:
        raise ValueError(f"icot_mult chain must be one of {ICOT_CHAINS}, got {chain!r}")
    width_a, width_b = len(str(a)), len(str(b))
    b_digits = [int(d) for d in reversed(str(b))]
    steps: list[str] = []
    partials: list[int] = []  # shifted to their answer columns
    total = 0
    for i, digit in enumerate(b_digits):
        partial = a * digit * 10**i
        partials.append(partial)
        total += partial
        text = _little_endian(partial, width_a + 1 + i)
        if i == 0:
            steps.append(text)
        elif i < width_b - 1 and chain == "icot":
            steps.append(f"+ {text} ( {_little_endian(total, width_a + 1 + i)} )")
        else:
            steps.append(f"+ {text}")
    if chain in ("columns", "columns_tens_first"):
        sums = [sum(p // 10**k % 10 for p in partials) for k in range(width_a + width_b)]
        width_s = len(str(9 * width_b))
        write = _little_endian if chain == "columns" else lambda v, w: " ".join(str(v).zfill(w))
        steps.append("= " + " ".join(write(v, width_s) for v in sums))
    question = f"{_little_endian(a, width_a)} * {_little_endian(b, width_b)}"
    return Example(question, steps, _little_endian(total, width_a + width_b), {"task": "icot_mult", "a": a, "b": b})


def icot_mult_factors(question: str) -> tuple[int, int]:
    """The factors of an iCoT multiplication question (`"5 6 3 2 * 7 4 3 4"` -> `(2365, 4347)`)."""
    left, sep, right = question.partition(" * ")
    digits_a, digits_b = left.split(), right.split()
    if not sep or not digits_a or not digits_b or not all(d.isdigit() and len(d) == 1 for d in digits_a + digits_b):
        raise ValueError(f"not an iCoT multiplication question: {question!r}")
    return int("".join(reversed(digits_a))), int("".join(reversed(digits_b)))


def _check_icot_mult(digits: int, digits_b: int | None, chain: str) -> None:
    _check_int("icot_mult", "digits", digits, 1, 30)
    if digits_b is not None:
        _check_int("icot_mult", "digits_b", digits_b, 1, 30)
    if chain not in ICOT_CHAINS:
        raise ValueError(f"task 'icot_mult': knob chain must be one of {', '.join(ICOT_CHAINS)}, got {chain!r}")


def _icot_factors(rng: random.Random, digits: int, digits_b: int | None) -> tuple[int, int]:
    """Factors uniform over numbers with exactly `digits` (and `digits_b`) digits, as in the iCoT files."""
    width_b = digits if digits_b is None else digits_b
    a = rng.randint(10 ** (digits - 1), 10**digits - 1)
    return a, rng.randint(10 ** (width_b - 1), 10**width_b - 1)


def _gen_icot_mult(rng: random.Random, digits: int, digits_b: int | None, chain: str) -> Example:
    return icot_mult_example(*_icot_factors(rng, digits, digits_b), chain)


def _draw_icot_mult(rng: random.Random, digits: int, digits_b: int | None, chain: str) -> tuple[str, tuple[int, int]]:
    a, b = _icot_factors(rng, digits, digits_b)
    return f"{_little_endian(a, len(str(a)))} * {_little_endian(b, len(str(b)))}", (a, b)


def _build_icot_mult(factors: tuple[int, int], digits: int, digits_b: int | None, chain: str) -> Example:
    return icot_mult_example(*factors, chain)


# ---------------------------------------------------------------------------------------------------------------
# chain_sum: a running computation in GSM8k-Aug's `<< x op y = z >>` equation-step style
# ---------------------------------------------------------------------------------------------------------------
# Operands are single digits below min(modulus, 10); the running value is combined with each next operand left to
# right, reduced mod `modulus`, and every step shows one combination. Numbers >= 10 are written big-endian, one
# digit per word. With the default ops "+" the question is just the operands; with any other op set the operators
# are written between the operands. Example (length 4, modulus 10):
#   3 5 2 7 || << 3 + 5 = 8 >> << 8 + 2 = 0 >> << 0 + 7 = 7 >> #### 7

_CHAIN_OPS = "+-*"


def _number(value: int) -> str:
    return " ".join(str(value))


def _check_chain_sum(length: int, modulus: int, ops: str) -> None:
    _check_int("chain_sum", "length", length, 2)
    _check_int("chain_sum", "modulus", modulus, 2)
    if not isinstance(ops, str) or not ops or set(ops) - set(_CHAIN_OPS) or len(set(ops)) != len(ops):
        raise ValueError(f"task 'chain_sum': knob ops must be a non-empty string of distinct ops from {_CHAIN_OPS!r}, "
                         f"got {ops!r}")


def _chain_sum_question(operands: list[int], operators: list[str], ops: str) -> str:
    if ops == "+":
        return " ".join(map(str, operands))
    return " ".join([str(operands[0])] + [f"{op} {x}" for op, x in zip(operators, operands[1:])])


def _draw_chain_sum(rng: random.Random, length: int, modulus: int, ops: str
                    ) -> tuple[str, tuple[list[int], list[str]]]:
    """(question, (operands, operators)) of one chain."""
    operands = [rng.randrange(min(modulus, 10)) for _ in range(length)]
    operators = [rng.choice(ops) for _ in range(length - 1)]
    return _chain_sum_question(operands, operators, ops), (operands, operators)


def _gen_chain_sum(rng: random.Random, length: int, modulus: int, ops: str) -> Example:
    return _build_chain_sum(_draw_chain_sum(rng, length, modulus, ops)[1], length, modulus, ops)


def _build_chain_sum(choices: tuple[list[int], list[str]], length: int, modulus: int, ops: str) -> Example:
    operands, operators = choices
    question = _chain_sum_question(operands, operators, ops)
    value = operands[0]
    steps = []
    for op, x in zip(operators, operands[1:]):
        new = (value + x if op == "+" else value - x if op == "-" else value * x) % modulus
        steps.append(f"<< {_number(value)} {op} {x} = {_number(new)} >>")
        value = new
    return Example(question, steps, _number(value), {"task": "chain_sum", "modulus": modulus})


# ---------------------------------------------------------------------------------------------------------------
# prosqa_like: ProsQA-style reachability over "Every X is a Y ." facts
# ---------------------------------------------------------------------------------------------------------------
# The names and concepts are the ones used in Coconut's ProsQA validation split, so with punctuation spaced out
# (`load_prosqa(path, spaced_punctuation=True)`) the real file tokenizes with this task's vocabulary.
# Graph: a path root -> c1 -> ... -> target (the steps), a second path from another person to neg_target, extra
# concepts hung off either side, and a few edges from the other person's side into the root's side. Root's side
# never points to the other side, so neg_target is unreachable from root and the root-to-target path is unique.

PROSQA_NAMES = (
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max",
    "Oliver", "Polly", "Rex", "Sally", "Sam", "Stella", "Tom", "Wren",
)  # fmt: skip
PROSQA_CONCEPTS = (
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus", "grimpus",
    "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus", "numpus", "quimpus",
    "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus", "terpus", "timpus", "tumpus",
    "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus", "zhorpus", "zumpus",
)  # fmt: skip
PROSQA_WORDS = ("Every", "is", "a", "Is", "or")


def _check_prosqa_like(nodes: int, path_length: int) -> None:
    _check_int("prosqa_like", "path_length", path_length, 1)
    _check_int("prosqa_like", "nodes", nodes, 2 * path_length, len(PROSQA_CONCEPTS))


def _fact(subject: str, obj: str) -> str:
    return f"{subject} is a {obj} ." if subject[0].isupper() else f"Every {subject} is a {obj} ."


def _gen_prosqa_like(rng: random.Random, nodes: int, path_length: int) -> Example:
    root, other = rng.sample(PROSQA_NAMES, 2)
    concepts = rng.sample(PROSQA_CONCEPTS, nodes)
    path, neg, extra = concepts[:path_length], concepts[path_length : 2 * path_length], concepts[2 * path_length :]
    edges: list[tuple[str, str]] = list(zip([root, *path[:-1]], path)) + list(zip([other, *neg[:-1]], neg))
    sides = {root: [root, *path], other: [other, *neg]}
    for concept in extra:
        side = sides[rng.choice((root, other))]
        edges.append((rng.choice(side), concept))
        side.append(concept)
    for concept in sides[other][1:]:  # cross edges: other side -> root side only, so root never reaches neg
        if rng.random() < 1 / 3:
            edges.append((concept, rng.choice(sides[root][1:])))
    facts = [_fact(u, v) for u, v in edges]
    rng.shuffle(facts)
    target, neg_target = path[-1], neg[-1]
    first, second = (target, neg_target) if rng.random() < 0.5 else (neg_target, target)
    question = " ".join(facts) + f" Is {root} a {first} or {second} ?"
    steps = [_fact(u, v) for u, v in zip([root, *path[:-1]], path)]
    symbols = [root, other, *concepts]
    index = {s: i for i, s in enumerate(symbols)}
    meta = {
        "task": "prosqa_like",
        "idx_to_symbol": symbols,
        "edges": [[index[u], index[v]] for u, v in edges],
        "root": 0,
        "target": index[target],
        "neg_target": index[neg_target],
    }
    return Example(question, steps, f"{root} is a {target} .", meta)


TASKS: dict[str, TaskSpec] = {
    "icot_mult": TaskSpec(
        "icot_mult",
        "multi-digit multiplication in iCoT's exact little-endian format; knobs: digits, digits_b, chain (icot: "
        "iCoT's steps with running sums; partials: the partial products alone; columns: the partial products, then "
        "the answer's column sums; columns_tens_first: the same with each sum's tens digit first)",
        {"digits": 4, "digits_b": None, "chain": "icot"},
        _check_icot_mult,
        _gen_icot_mult,
        draw=_draw_icot_mult,
        build=_build_icot_mult,
    ),
    "chain_sum": TaskSpec(
        "chain_sum",
        "running value of a digit chain mod `modulus`, steps `<< x op y = z >>`; knobs: length, modulus, ops",
        {"length": 8, "modulus": 10, "ops": "+"},
        _check_chain_sum,
        _gen_chain_sum,
        draw=_draw_chain_sum,
        build=_build_chain_sum,
    ),
    "prosqa_like": TaskSpec(
        "prosqa_like",
        "ProsQA-style graph reachability; knobs: nodes (concepts), path_length (steps)",
        {"nodes": 10, "path_length": 3},
        _check_prosqa_like,
        _gen_prosqa_like,
        PROSQA_NAMES + PROSQA_CONCEPTS + PROSQA_WORDS,
    ),
}
