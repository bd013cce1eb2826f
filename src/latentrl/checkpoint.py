"""Crash-safe checkpoints and resume.

A checkpoint is the directory ``output_dir/checkpoint-{step}/`` holding:

- the model, written by the caller's ``save_model(path)`` callback (normally ``LatentModel.save_pretrained``: the
  full model, or under LoRA only the peft adapter, the side modules and the latent tokens' base rows);
- ``optimizer.pt`` and ``scheduler.pt`` (state dicts);
- ``trainer_state.json``: the step plus the JSON-able part of ``extra_state``; other values (tensors, nested
  state dicts) go to ``extra_state.pt``;
- ``rng_state.pt``: python ``random``, numpy, torch CPU (and CUDA) RNG states and any ``torch.Generator`` passed
  in ``extra_state["generators"]``;
- ``COMPLETE``: the completion marker, written last, listing every other file with its size, so that a file
  deleted or cut short afterwards (a full disk, a copy interrupted) is found before a resume relies on it
  (:func:`checkpoint_problem`); :func:`latest_checkpoint` skips such a checkpoint with a warning naming the file.

Everything is written into ``output_dir/.tmp-checkpoint-{step}-<random>/``, fsync'ed, and moved into place with
one ``os.replace``, so a crash at any point leaves earlier checkpoints untouched and at most a ``.tmp-*``
directory, which the next save or resume deletes. All ``.pt`` files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "COMPLETE_MARKER",
    "atomic_write_json",
    "atomic_write_text",
    "checkpoint_problem",
    "cleanup_tmp_dirs",
    "get_rng_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "save_model_into",
    "set_rng_state",
]

COMPLETE_MARKER = "COMPLETE"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
TRAINER_STATE_FILE = "trainer_state.json"
EXTRA_STATE_FILE = "extra_state.pt"
RNG_STATE_FILE = "rng_state.pt"
TMP_PREFIX = ".tmp-"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------------------------------------------
# Durable file-system helpers
# ----------------------------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    """fsync a directory so renames/creations inside it survive a power loss (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                _fsync_file(p)
        _fsync_dir(Path(dirpath))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically: readers see the old file or the whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """``atomic_write_text`` of ``json.dumps(obj)`` (strict JSON: NaN/inf are rejected)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def _remove_tree(path: Path) -> None:
    """Delete a directory so that no half-deleted copy can ever look like a checkpoint: rename first, then rmtree."""
    if not path.exists():
        return
    doomed = path.with_name(f"{TMP_PREFIX}delete-{path.name}-{os.getpid()}-{random.getrandbits(32):08x}")
    try:
        os.replace(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def save_model_into(folder: str | Path, save_model: Callable[[Path], None]) -> Path:
    """Write a model into ``folder``, which also holds other things (a run's metrics and checkpoints), so it cannot
    be replaced with one ``os.replace``: ``save_model(path)`` writes into ``folder/.tmp-model-<random>/``, which is
    fsync'ed and then moved in file by file, ``config.json`` last. A crash leaves whole files only, and no
    ``config.json`` until every weight file is in place, so a half-saved model is never read as a model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}model-", dir=folder))
    try:
        save_model(tmp)
        _fsync_tree(tmp)
        files = sorted((f for f in tmp.rglob("*") if f.is_file()), key=lambda f: (f.name == "config.json", str(f)))
        for f in files:
            dest = folder / f.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
        _fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def cleanup_tmp_dirs(output_dir: str | Path) -> list[Path]:
    """Delete leftovers of interrupted saves (``.tmp-*`` entries) in ``output_dir``; returns what was removed."""
    output_dir = Path(output_dir)
    removed: list[Path] = []
    if not output_dir.is_dir():
        return removed
    for p in output_dir.iterdir():
        if not p.name.startswith(TMP_PREFIX):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                continue
        removed.append(p)
    return removed


# ----------------------------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------------------------


def get_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot of python, numpy, torch (CPU + CUDA) and the given generators' RNG states (weights_only-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"extra_state['generators'][{name!r}] must be a torch.Generator, got {type(gen).__name__}")
        state["generators"][str(name)] = gen.get_state()
    return state


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore a snapshot taken by :func:`get_rng_state` (and the named generators' states)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states:
        if torch.cuda.is_available():
            count = min(len(cuda_states), torch.cuda.device_count())
            if count < len(cuda_states):
                warnings.warn(f"checkpoint has CUDA RNG states for {len(cuda_states)} devices, restoring {count}", stacklevel=2)
            for i in range(count):
                torch.cuda.set_rng_state(cuda_states[i], device=i)
        else:
            warnings.warn("checkpoint has CUDA RNG states but CUDA is not available here; they are not restored", stacklevel=2)
    saved = state.get("generators") or {}
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"no RNG state for generator {name!r} in checkpoint (has: {sorted(saved)})")
        gen.set_state(saved[name])


# ----------------------------------------------------------------------------------------------------------------
# Listing
# ----------------------------------------------------------------------------------------------------------------


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest (lowest step) first. Temp and unfinished dirs are ignored."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and _is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _file_manifest(root: Path) -> dict[str, int]:
    """Relative path -> size in bytes of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


#: CRC-32s already computed, by (path, size, mtime): a resume checks the same checkpoint several times (the CLI's
#: early check, the trainer's, `load_checkpoint`'s) and a checkpoint may hold gigabytes
_CRC_CACHE: dict[tuple[str, int, int], int] = {}


def _crc32(path: Path) -> int:
    """CRC-32 of a file's bytes (read in 4 MiB pieces): catches damage that leaves the size unchanged."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CRC_CACHE:
        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                crc = zlib.crc32(chunk, crc)
        _CRC_CACHE[key] = crc
    return _CRC_CACHE[key]


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is unusable (header unreadable, data shorter than the header says), or None.
    Reads only the header, so it costs nothing next to loading the weights."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        return f"{path.name} is not a readable safetensors file ({size} bytes; truncated or corrupt)"
    if size < 8 + n + end:
        return f"{path.name} is truncated ({size} of {8 + n + end} bytes)"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why checkpoint ``path`` cannot be resumed from, naming the file and the cause; None when it is intact.

    Checks the completion marker, every file the marker lists (present, with the size and, for checkpoints saved
    since 2026-12-08, the CRC-32 it was saved with: this reads every file once), and for checkpoints saved before
    the marker listed files, that ``trainer_state.json`` parses and that every ``.safetensors`` file holds the data
    its header announces.
    """
    path = Path(path)
    if not path.is_dir():
        return "the folder does not exist"
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return f"no {COMPLETE_MARKER} marker (its save was interrupted)"
    try:
        marker_data = json.loads(marker.read_text(encoding="utf-8"))
        files = marker_data.get("files")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return f"its {COMPLETE_MARKER} marker is unreadable"
    if isinstance(files, dict):
        for name, size in files.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            actual = f.stat().st_size
            if actual != size:
                cut = "truncated" if actual < size else "changed"
                return f"{name} is {cut} ({actual} bytes, saved with {size})"
        crcs = marker_data.get("crc32")
        for name, crc in (crcs.items() if isinstance(crcs, dict) else ()):
            if _crc32(path / name) != crc:
                return f"{name} is corrupt (its bytes changed since it was saved: CRC-32 mismatch)"
        return None
    try:
        json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{TRAINER_STATE_FILE} is missing or unreadable"
    for f in sorted(path.rglob("*.safetensors")):
        problem = _safetensors_problem(f)
        if problem:
            return problem
    return None


def latest_checkpoint(
    output_dir: str | Path, *, problem: Callable[[Path], str | None] | None = checkpoint_problem
) -> Path | None:
    """The newest checkpoint in ``output_dir`` that ``problem`` finds intact (None: the newest complete one), or
    None. Each newer damaged checkpoint is skipped with a warning naming its file and cause."""
    damaged: list[tuple[Path, str]] = []
    found = None
    for ckpt in reversed(list_checkpoints(output_dir)):
        cause = problem(ckpt) if problem is not None else None
        if cause is None:
            found = ckpt
            break
        damaged.append((ckpt, cause))
    for ckpt, cause in damaged:
        then = f"falling back to {found.name}" if found is not None else "no intact checkpoint is left"
        warnings.warn(f"checkpoint {ckpt} is damaged: {cause}; {then}", stacklevel=2)
    return found


def _is_jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    save_model: Callable[[Path], None],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any = None,
    extra_state: Mapping[str, Any] | None = None,
    total_limit: int | None = None,
) -> Path:
    """Atomically write ``output_dir/checkpoint-{step}/`` and prune old checkpoints; returns the checkpoint path.

    ``save_model(path)`` writes the model into ``path`` (e.g. ``lambda p: model.save_pretrained(p)``).
    ``extra_state``: JSON-able values go to ``trainer_state.json``; others (tensors, state dicts) to
    ``extra_state.pt``; ``extra_state["generators"]`` (name -> ``torch.Generator``) is saved with the RNG states.
    ``total_limit``: keep at most this many complete checkpoints; the one just saved is never deleted.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if total_limit is not None and total_limit < 1:
        raise ValueError(f"total_limit must be >= 1 or None, got {total_limit}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cleanup_tmp_dirs(output_dir)

    extra = dict(extra_state or {})
    if "step" in extra:
        raise ValueError("extra_state may not contain the reserved key 'step'")
    generators = extra.pop("generators", None) or {}
    json_part = {k: v for k, v in extra.items() if _is_jsonable(v)}
    tensor_part = {k: v for k, v in extra.items() if k not in json_part}

    final = output_dir / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}checkpoint-{step}-", dir=output_dir))
    try:
        save_model(tmp)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        if tensor_part:
            torch.save(tensor_part, tmp / EXTRA_STATE_FILE)
        torch.save(get_rng_state(generators), tmp / RNG_STATE_FILE)
        state = {"step": step, **json_part}
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        files = _file_manifest(tmp)
        marker = {"step": step, "files": files, "crc32": {name: _crc32(tmp / name) for name in files}}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): move the old copy out of the way first
            _remove_tree(final)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if total_limit is not None:
        others = [p for p in list_checkpoints(output_dir) if p != final]
        keep = total_limit - 1
        doomed = others[: max(0, len(others) - keep)]
        for p in doomed:
            _remove_tree(p)
        if doomed:
            _fsync_dir(output_dir)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG states from checkpoint ``path``; return the trainer state.

    The returned dict has ``step`` and every ``extra_state`` entry given to :func:`save_checkpoint` (except
    ``generators``: pass the generators here to have their states restored in place). Model weights are the
    caller's job (``from_pretrained(path)``). Leftover ``.tmp-*`` dirs beside ``path`` are deleted.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not _is_complete(path):
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    cause = checkpoint_problem(path)
    if cause is not None:
        raise ValueError(f"cannot resume from {path}: {cause}")
    cleanup_tmp_dirs(path.parent)

    state = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    if (path / EXTRA_STATE_FILE).is_file():
        state.update(torch.load(path / EXTRA_STATE_FILE, map_location="cpu", weights_only=True))
    if optimizer is not None:
        opt_file = path / OPTIMIZER_FILE
        if not opt_file.is_file():
            raise FileNotFoundError(f"{opt_file} missing: the checkpoint was saved without an optimizer")
        try:
            optimizer.load_state_dict(torch.load(opt_file, map_location="cpu", weights_only=True))
        except ValueError as e:  # torch: "loaded state dict has a different number of parameter groups"
            raise ValueError(f"the optimizer state in {opt_file} does not fit this run's trainable parameters ({e}): "
                             "resume with the settings the run was trained with (method, lora.*, side modules)"
                             ) from e
    if scheduler is not None:
        sch_file = path / SCHEDULER_FILE
        if not sch_file.is_file():
            raise FileNotFoundError(f"{sch_file} missing: the checkpoint was saved without a scheduler")
        scheduler.load_state_dict(torch.load(sch_file, map_location="cpu", weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(path / RNG_STATE_FILE, map_location="cpu", weights_only=True), generators)
    return state
