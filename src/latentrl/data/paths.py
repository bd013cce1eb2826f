"""Where the real validation splits live.

The iCoT files (4×4 and 5×5 multiplication, GSM8k-Aug) ship inside the package (`latentrl/assets/data`, MIT, with
their licence), so a bare clone or a `pip install` can evaluate on real data. Other splits (ProsQA) are found in a
`shared/data` folder beside the repository or one of its parents, as the project's checkouts have it.
`$LATENTRL_SHARED_DATA` names a folder that wins over both.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LATENTRL_SHARED_DATA"
PACKAGED_DATA = Path(__file__).resolve().parents[1] / "assets" / "data"


def find_shared_data(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest `shared/data` folder in `start` (default: this package's folder) or one of its parents."""
    root = Path(start).resolve() if start is not None else Path(__file__).resolve().parent
    for base in (root, *root.parents):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def real_data_dirs() -> list[Path]:
    """The folders searched for a real split, first match wins: `$LATENTRL_SHARED_DATA`, the packaged copies, then
    `shared/data` beside the repository."""
    env = os.environ.get(ENV_VAR)
    dirs = [Path(env).expanduser()] if env else []
    dirs.append(PACKAGED_DATA)
    shared = find_shared_data()
    if shared is not None:
        dirs.append(shared)
    return dirs


def find_real_data_file(relative: str) -> Path | None:
    """`relative` (e.g. `icot_mult_4x4/valid.txt`) in the first folder of `real_data_dirs` that has it, else None."""
    for folder in real_data_dirs():
        path = folder / relative
        if path.is_file():
            return path
    return None


def real_data_file(relative: str) -> Path:
    """Like `find_real_data_file`, but a missing file is a FileNotFoundError naming every folder searched."""
    path = find_real_data_file(relative)
    if path is None:
        searched = ", ".join(str(d) for d in real_data_dirs())
        raise FileNotFoundError(
            f"real data file {relative!r} not found (searched: {searched}); set {ENV_VAR}=/path/to/folder holding it"
        )
    return path
