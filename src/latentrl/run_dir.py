"""Run folders: a new run never mixes with or silently replaces an earlier one, and a resume starts from an
intact checkpoint of the same run.

Every command that trains into an ``output_dir`` (``latentrl train`` / `GRPOTrainer.train`, DLR, the SFT trainers,
``coconut-sft``, ``pretrain``, the demo) calls :func:`check_new_run` before it writes anything (the commands before
they load the model), and refuses a folder that already holds a run (its metrics, run config, TensorBoard logs,
checkpoints or saved model) unless the run is resumed or ``overwrite_output_dir`` is set (Hugging Face's name).
With ``overwrite_output_dir`` the old run is replaced by :func:`replace_run` in one rename — by the RL trainer only
once its first step has succeeded, by the SFT trainers when training starts — so the folder never holds a mixture
of both. A folder holding only other files (a YAML kept beside the run) is not a run. While a run trains, its
process holds the folder's lock (:func:`run_lock`), so a second process — a ``--resume`` started while the first
still runs — is refused instead of mixing its checkpoints and logs with the first one's.

:func:`resume_checkpoint` picks the checkpoint a resume starts from: the newest intact one (damaged newer ones
are skipped with a warning naming the file), and :func:`check_same_run` checks it was written by the same method
from the same model.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded against a concurrent second process
    fcntl = None

from latentrl.checkpoint import TRAINER_STATE_FILE, checkpoint_problem, latest_checkpoint, list_checkpoints
from latentrl.config import ConfigError
from latentrl.logger import METRICS_FILE

__all__ = ["LOCK_FILE", "RUN_FILES", "check_new_run", "check_run_folder", "check_same_run", "replace_run",
           "resume_checkpoint", "run_lock", "run_entries", "set_aside_newer_checkpoints"]

#: names a latentrl run writes into its output_dir (besides checkpoint-N / step-N folders)
RUN_FILES = frozenset({
    "metrics.jsonl", "run_config.json", "tb", "results.json", "training_args.json", "curves.png",
    "demo_results.json", "config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors",
})
_RUN_ENTRY = re.compile(r"^(checkpoint-\d+|step-\d+|\.tmp-checkpoint-.*|superseded-after-checkpoint-.*)$")
#: a model folder saved with `LatentModel.save_pretrained`: a config and one of its weight files (HF / peft names)
MODEL_FILES = {
    "config.json": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json"),
    "adapter_config.json": ("adapter_model.safetensors", "adapter_model.bin"),
}


def run_entries(output_dir: str | Path) -> list[str]:
    """Names in ``output_dir`` that belong to an earlier run (empty when the folder is absent or holds none)."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.name in RUN_FILES or _RUN_ENTRY.match(p.name))


def check_new_run(output_dir: str | Path | None, *, overwrite: bool = False, resumable: bool = True,
                  key: str = "output_dir", model_name_or_path: str | None = None) -> None:
    """Refuse to start a new run in a folder holding an earlier run, unless `overwrite` (then see `replace_run`).

    Writes nothing, so callers run it before loading models or data to fail in seconds. `resumable`: whether the
    command can resume (its message then says how); `key`: the option that names the folder. With `overwrite`, a
    starting model (`model_name_or_path`) inside the folder is refused: replacing the run would delete it.
    """
    if output_dir is None:
        return
    if overwrite:
        start = Path(model_name_or_path) if model_name_or_path else None
        if start is not None and start.exists() and Path(output_dir).resolve() in start.resolve().parents:
            raise ConfigError(f"overwrite_output_dir=true would delete the starting model {model_name_or_path} "
                              f"with the earlier run in {output_dir}: copy it out of {key} first, or choose another "
                              f"{key}")
        return
    found = run_entries(output_dir)
    if not found:
        return
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    resume = "continue it with --resume (resume_from_checkpoint=latest), " if resumable else ""
    raise ConfigError(f"{key} {str(output_dir)!r} already holds a run ({shown}); a new run would mix with it or "
                      f"overwrite it: {resume}choose another {key}, or set overwrite_output_dir=true to replace it")


#: the lock a training process holds in its output_dir (`run_lock`); not a run entry, removed when the run ends
LOCK_FILE = ".latentrl.lock"


@contextlib.contextmanager
def run_lock(output_dir: str | Path | None, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `output_dir` while a run trains into it, so that a second process (a `--resume`
    started while the first still runs, or a second new run) is refused at once instead of mixing checkpoints and
    logs. An advisory `flock` on `output_dir/.latentrl.lock`: the kernel releases it when the process dies, even by
    SIGKILL, so a killed run never blocks its own resume. The file is deleted when the run ends, and a folder this
    call created is removed again when the run wrote nothing into it. `enabled`: False on the processes of a launch
    that do not write (only the main one locks)."""
    if not enabled or output_dir is None or fcntl is None:
        yield
        return
    folder = Path(output_dir)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"output_dir {str(folder)!r} exists and is not a folder") from None
    except OSError as e:
        raise ConfigError(f"output_dir {str(folder)!r} cannot be created: {e.strerror or e}") from None
    path = folder / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held by another process
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"output_dir {str(folder)!r} is in use by a run that is still going ({holder}); wait for "
                          "it to end or stop it before resuming or starting another run there") from None
    except OSError as e:  # a file system without locks (some network mounts): train unguarded, say so
        warnings.warn(f"cannot lock {path} ({e}); this run is not guarded against a second process training into "
                      f"{folder}", stacklevel=3)
        handle.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        yield
        return
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the run wrote nothing


def replace_run(output_dir: str | Path) -> None:
    """Clear the earlier run out of `output_dir` before a new run writes into it (`overwrite_output_dir`).

    The folder is renamed away in one step and recreated, so no reader ever sees old and new files together, then
    files that are not part of a run (the user's own) are moved back and the old run is deleted. A crash in
    between leaves the old run whole in a hidden sibling folder ``.NAME.replaced-*``. When the folder is the
    working directory (or holds it) it cannot be renamed away: its run entries are moved into one hidden
    ``.tmp-replaced-*`` folder inside it instead, then deleted.
    """
    d = Path(output_dir).resolve()
    entries = run_entries(d)
    if not entries:
        return
    tag = f"{os.getpid()}-{random.getrandbits(32):08x}"
    cwd = Path.cwd().resolve()
    if cwd == d or d in cwd.parents:
        trash = d / f".tmp-replaced-{tag}"
        trash.mkdir()
        for name in entries:
            os.replace(d / name, trash / name)
        shutil.rmtree(trash, ignore_errors=True)
        return
    old = d.with_name(f".{d.name}.replaced-{tag}")
    os.replace(d, old)
    d.mkdir()
    for p in old.iterdir():
        if not (p.name in RUN_FILES or _RUN_ENTRY.match(p.name)):
            os.replace(p, d / p.name)
    shutil.rmtree(old, ignore_errors=True)


def model_checkpoint_problem(path: Path) -> str | None:
    """`checkpoint_problem`, plus: a trainer's checkpoint must hold a model folder (config.json and weights, or a
    LoRA adapter) — checked by name for checkpoints saved before the completion marker listed its files."""
    problem = checkpoint_problem(path)
    if problem is not None:
        return problem
    for config, weights in MODEL_FILES.items():
        if (path / config).is_file():
            if not any((path / w).is_file() for w in weights):
                return f"{weights[0]} is missing (no model weights beside {config})"
            return None
    return "config.json is missing (the model folder is incomplete)"


def resume_checkpoint(output_dir: str | Path, resume: str | bool) -> Path:
    """The checkpoint a resume starts from: `resume` is True / 'latest' / 'true' (the newest intact checkpoint in
    `output_dir`; damaged newer ones are skipped with a warning naming the file and the cause) or a path, which
    must be intact (else a `ValueError` naming the file and the cause, and the newest intact one if any)."""
    word = resume.strip().lower() if isinstance(resume, str) else None
    if word in ("true", "yes"):  # HF Trainer's `resume_from_checkpoint=True`, as a YAML or key=value string
        resume = "latest"
    elif word in ("false", "no", ""):
        raise ValueError(f"resume_from_checkpoint={resume!r} names no checkpoint: leave it unset (null) to start a "
                         "new run, or set it to latest or a checkpoint folder")
    if resume is True or resume == "latest":
        path = latest_checkpoint(output_dir, problem=model_checkpoint_problem)
        if path is None:
            held = run_entries(output_dir)
            again = (f"; it holds what an earlier run wrote before its first checkpoint ({', '.join(held)}): start "
                     "the run again over it with overwrite_output_dir=true (and without --resume), or in another "
                     "output_dir" if held else "; start a new run without --resume")
            raise FileNotFoundError(f"--resume: no intact checkpoint in {output_dir} (nothing to resume){again}")
        return path
    path = Path(resume)
    problem = model_checkpoint_problem(path)
    if problem is not None:
        intact = [p for p in list_checkpoints(path.parent) if p != path and model_checkpoint_problem(p) is None]
        hint = f"; the newest intact checkpoint there is {intact[-1]}" if intact else ""
        raise ValueError(f"cannot resume from {path}: {problem}{hint}")
    if path.resolve().parent != Path(output_dir).resolve():
        raise ValueError(f"cannot resume from {path}: it is a checkpoint of the run in {path.parent}, not of this "
                         f"run's output_dir {output_dir} (resuming would mix the two runs' logs and checkpoints); "
                         f"to continue that run set output_dir={path.parent}, to start a new run from its weights set "
                         f"model_name_or_path={path} without resume_from_checkpoint")
    return path


def set_aside_newer_checkpoints(output_dir: str | Path, checkpoint: str | Path) -> Path | None:
    """A resume from an older checkpoint than the run folder's newest branches the run there. So that the folder
    holds one line of training and nothing is lost, the newer checkpoints move, with a copy of the metrics logged so
    far (the resumed run replaces those after its step), into `superseded-after-<checkpoint>[-k]/` in the folder,
    with a warning naming it. Returns that folder (None: nothing newer). Call it on the main process, under the
    run's lock."""
    out, ckpt = Path(output_dir), Path(checkpoint).resolve()
    listed = list_checkpoints(out)  # oldest first
    at = [p.resolve() for p in listed]
    if ckpt not in at or ckpt == at[-1]:
        return None
    newer = listed[at.index(ckpt) + 1:]
    dest, k = out / f"superseded-after-{ckpt.name}", 1
    while dest.exists():
        k += 1
        dest = out / f"superseded-after-{ckpt.name}-{k}"
    dest.mkdir()
    for name in (METRICS_FILE,):
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    for p in newer:
        os.replace(p, dest / p.name)
    warnings.warn(f"resuming from {ckpt.name}, older than the run's newest checkpoint: {', '.join(p.name for p in newer)} "
                  f"and a copy of {METRICS_FILE} moved to {dest}", stacklevel=2)
    return dest


def _model_id(name_or_path: str | None) -> str | None:
    """A model name or path as runs record it: local folders resolved (the same folder named two ways matches)."""
    if name_or_path is None:
        return None
    p = Path(name_or_path)
    return str(p.resolve()) if p.exists() else str(name_or_path)


def run_identity(method: str, model_name_or_path: str | None) -> dict[str, str | None]:
    """What a trainer records in each checkpoint's trainer_state.json so a resume can check it is the same run."""
    return {"method": method, "model_name_or_path": _model_id(model_name_or_path)}


def check_same_run(checkpoint: str | Path, method: str, model_name_or_path: str | None, *,
                   trainer: bool = False) -> None:
    """Refuse to resume `checkpoint` with another method or another starting model than the run that wrote it.

    Reads the checkpoint's trainer_state.json (the run's run_config.json for checkpoints that predate it). Another
    method would load a different optimizer layout; another `model_name_or_path` would resume weights onto a model
    the run did not start from — both fail later with unrelated errors, or not at all. `trainer`: `method` names
    a supervised loop (`latentrl.sft.loop.StepLoop`'s name), and the message says so.
    """
    checkpoint = Path(checkpoint)
    try:
        saved = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    if "method" not in saved:
        run_config = checkpoint.parent / "run_config.json"
        try:
            cfg = json.loads(run_config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        saved = run_identity(cfg.get("method"), cfg.get("model_name_or_path"))
    if saved.get("method") not in (None, method):
        if trainer:  # a supervised loop: `method` names the trainer (coconut, sft[cot], ...), not a config key
            raise ConfigError(f"cannot resume {checkpoint}: it was written by the {saved['method']!r} trainer, this "
                              f"run is {method!r}; resume it with that trainer or start a new run in another "
                              "output_dir")
        raise ConfigError(f"cannot resume {checkpoint}: it was trained with method {saved['method']!r}, this run's "
                          f"method is {method!r}; resume with method={saved['method']} (the run's own config is in "
                          f"{checkpoint.parent / 'run_config.json'}) or start a new run in another output_dir")
    was, now = saved.get("model_name_or_path"), _model_id(model_name_or_path)
    if was is not None and now is not None and was != now:
        raise ConfigError(f"cannot resume {checkpoint}: the run started from model_name_or_path={was!r}, this run "
                          f"names {now!r}; resume with model_name_or_path={was} (the weights come from the "
                          "checkpoint, the architecture and tokenizer from that model) or start a new run in "
                          "another output_dir")


def check_run_folder(cfg) -> None:
    """The output-folder checks of a `GRPOConfig` run, before anything is loaded: a resume is resolved to its
    intact checkpoint (written back to `cfg.resume_from_checkpoint`) and checked to be the same run; a new run
    must not land on an earlier one."""
    if cfg.resume_from_checkpoint:
        path = resume_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint)
        check_same_run(path, cfg.method, cfg.model_name_or_path)
        cfg.resume_from_checkpoint = str(path)
    else:
        check_new_run(cfg.output_dir, overwrite=cfg.overwrite_output_dir, model_name_or_path=cfg.model_name_or_path)
