"""Which problems a checkpoint was trained on, so that a later stage (RL prompts) can stay off them.

A latent init that saw each of its 8,000 training problems ~300 times scores far higher on them than on new ones:
RL prompts drawn from that same set reward memorised chains, not reasoning. Training scripts therefore record each
synthetic draw they trained on as a `TrainDraw` (the arguments of `train_eval_split`) in the checkpoint's metadata
file, under `train_data` (a list: a checkpoint trained in phases, e.g. CoT pretraining then latent SFT, lists every
phase's draw). `training_questions(path)` regenerates them; `latentrl bench` excludes them from its RL prompts.

`latentrl train` writes the same record into every checkpoint it saves (`train_data.json`): the starting model's
draws plus its own prompt draw, which names the draws it skipped (`excluded`), so RL continued from an RL checkpoint
still stays off the problems the original init trained on.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latentrl.data.loaders import DEFAULT_N_EVAL
from latentrl.data.tasks import train_eval_questions

TRAIN_DATA_FILE = "train_data.json"  # written by `latentrl train` into each checkpoint
METADATA_FILES = ("latent_init.json", "results.json", TRAIN_DATA_FILE)  # init scripts; `latentrl pretrain`; train
TRAIN_DATA_KEY = "train_data"
_FIELDS = ("dataset", "n_train", "n_eval", "seed", "knobs", "excluded")


@dataclass(frozen=True)
class TrainDraw:
    """One seeded synthetic training draw: `train_eval_split(dataset, n_train, n_eval, seed, **knobs)[0]`."""

    dataset: str
    n_train: int
    n_eval: int
    seed: int
    knobs: dict[str, Any] = field(default_factory=dict)
    excluded: tuple[TrainDraw, ...] = ()
    """Draws whose questions this one skipped (`train_eval_split(..., exclude=...)`), e.g. RL prompts drawn off the
    starting model's training problems."""

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "excluded"}
        return {**d, "excluded": [e.to_dict() for e in self.excluded]} if self.excluded else d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "train_data") -> TrainDraw:
        if not isinstance(d, dict):
            raise ValueError(f"{where}: a train draw must be a JSON object, got {type(d).__name__}")
        missing = sorted({"dataset", "n_train", "n_eval", "seed"} - set(d))
        unknown = sorted(set(d) - set(_FIELDS))
        if missing or unknown:
            raise ValueError(f"{where}: a train draw needs dataset, n_train, n_eval, seed (and optional knobs, "
                             f"excluded); missing {missing}, unknown {unknown}")
        excluded = d.get("excluded", [])
        if not isinstance(excluded, list):
            raise ValueError(f"{where}: excluded must be a list of train draws, got {type(excluded).__name__}")
        return cls(d["dataset"], int(d["n_train"]), int(d["n_eval"]), int(d["seed"]), dict(d.get("knobs") or {}),
                   tuple(cls.from_dict(e, f"{where}.excluded[{i}]") for i, e in enumerate(excluded)))

    @classmethod
    def of_train_split(cls, dataset: str, n: int, seed: int, excluded: tuple[TrainDraw, ...] = (),
                       **knobs: Any) -> TrainDraw:
        """The draw `load_examples(dataset, split="train", n=n, seed=seed, exclude=<excluded's questions>, **knobs)`
        makes."""
        return cls(dataset, n, DEFAULT_N_EVAL, seed, knobs, tuple(excluded))

    def key(self) -> tuple:
        """A hashable form (the knobs dict sorted), for caching."""
        return (self.dataset, self.n_train, self.n_eval, self.seed, tuple(sorted(self.knobs.items())),
                tuple(e.key() for e in self.excluded))

    def questions(self) -> frozenset[str]:
        return _draw_questions(self.key())


@functools.lru_cache(maxsize=8)
def _draw_questions(key: tuple) -> frozenset[str]:
    """Regenerated from the seed, questions only (1,000,000 icot draws: ~3 s; cached). A draw that skipped a few banned
    questions (a real validation file's) regenerates a few tail questions fewer; none that it did not train on."""
    dataset, n_train, n_eval, seed, knobs, excluded = key
    banned = frozenset().union(*(_draw_questions(e) for e in excluded))
    train, _ = train_eval_questions(dataset, n_train, n_eval, seed, exclude=banned, **dict(knobs))
    return frozenset(train)


def read_train_draws(checkpoint: str | Path) -> list[TrainDraw]:
    """The draws a checkpoint folder records in its metadata file; [] when it records none (e.g. a hub model)."""
    for name in METADATA_FILES:
        meta = Path(checkpoint) / name
        if meta.is_file():
            try:
                entries = json.loads(meta.read_text()).get(TRAIN_DATA_KEY) or []
            except (json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"{meta}: not a JSON object ({e}); cannot read which problems it was trained on") from e
            if not isinstance(entries, list):
                raise ValueError(f"{meta}: {TRAIN_DATA_KEY} must be a list of train draws, got {type(entries).__name__}")
            return [TrainDraw.from_dict(e, f"{meta}: {TRAIN_DATA_KEY}[{i}]") for i, e in enumerate(entries)]
    return []


def training_questions(checkpoint: str | Path, dataset: str | None = None) -> frozenset[str]:
    """Every question of the checkpoint's recorded draws (only those of `dataset` when given)."""
    draws = [d for d in read_train_draws(checkpoint) if dataset is None or d.dataset == dataset]
    return frozenset().union(*(d.questions() for d in draws))


def write_train_draws(folder: str | Path, draws: list[TrainDraw]) -> Path:
    """Record `draws` in `folder/train_data.json` (what `read_train_draws` reads back)."""
    path = Path(folder) / TRAIN_DATA_FILE
    path.write_text(json.dumps({TRAIN_DATA_KEY: [d.to_dict() for d in draws]}, indent=1) + "\n")
    return path
