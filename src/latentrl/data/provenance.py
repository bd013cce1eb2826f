"""Which problems a checkpoint was trained on, so that a later stage (RL prompts) can stay off them.

A latent init that saw each of its 8,000 training problems ~300 times scores far higher on them than on new ones:
RL prompts drawn from that same set reward memorised chains, not reasoning. Training scripts therefore record each
synthetic draw they trained on as a `TrainDraw` (the arguments of `train_eval_split`) in the checkpoint's metadata
file, under `train_data` (a list: a checkpoint trained in phases, e.g. CoT pretraining then latent SFT, lists every
phase's draw). `training_questions(path)` regenerates them; `latentrl bench` excludes them from its RL prompts.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latentrl.data.loaders import DEFAULT_N_EVAL
from latentrl.data.tasks import train_eval_split

METADATA_FILES = ("latent_init.json", "results.json")  # scripts/train_*_init.py; `latentrl pretrain`
TRAIN_DATA_KEY = "train_data"


@dataclass(frozen=True)
class TrainDraw:
    """One seeded synthetic training draw: `train_eval_split(dataset, n_train, n_eval, seed, **knobs)[0]`."""

    dataset: str
    n_train: int
    n_eval: int
    seed: int
    knobs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "train_data") -> TrainDraw:
        missing = sorted({"dataset", "n_train", "n_eval", "seed"} - set(d))
        unknown = sorted(set(d) - {"dataset", "n_train", "n_eval", "seed", "knobs"})
        if missing or unknown:
            raise ValueError(f"{where}: a train draw needs dataset, n_train, n_eval, seed (and optional knobs); "
                             f"missing {missing}, unknown {unknown}")
        return cls(d["dataset"], int(d["n_train"]), int(d["n_eval"]), int(d["seed"]), dict(d.get("knobs") or {}))

    @classmethod
    def of_train_split(cls, dataset: str, n: int, seed: int, **knobs: Any) -> TrainDraw:
        """The draw `load_examples(dataset, split="train", n=n, seed=seed, **knobs)` makes."""
        return cls(dataset, n, DEFAULT_N_EVAL, seed, knobs)

    def questions(self) -> frozenset[str]:
        return _draw_questions(self.dataset, self.n_train, self.n_eval, self.seed,
                               tuple(sorted(self.knobs.items())))


@functools.lru_cache(maxsize=8)
def _draw_questions(dataset: str, n_train: int, n_eval: int, seed: int,
                    knobs: tuple[tuple[str, Any], ...]) -> frozenset[str]:
    """Regenerated from the seed (1,000,000 icot draws take ~10 s, so cached). A draw that skipped a few banned
    questions (a real validation file's) regenerates a few tail questions fewer; none that it did not train on."""
    train, _ = train_eval_split(dataset, n_train, n_eval, seed, **dict(knobs))
    return frozenset(ex.question for ex in train)


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
