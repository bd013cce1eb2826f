"""Where the real validation splits live (the project's `shared/data` folder, beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LATENTRL_SHARED_DATA"


def shared_data_dir() -> Path:
    """`$LATENTRL_SHARED_DATA`, else the first `shared/data` found beside the repository or a parent of it."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"could not find the shared data folder (shared/data beside the repository); set {ENV_VAR}=/path/to/data"
    )


def shared_data_file(relative: str) -> Path:
    path = shared_data_dir() / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (set {ENV_VAR} to the folder holding {relative})")
    return path
