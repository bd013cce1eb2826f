"""Training metrics: JSONL (one flushed line per log call) + TensorBoard, plots, and quiet progress bars.

``output_dir/metrics.jsonl`` holds one JSON object per logged step: ``{"step": 3, "reward": 0.5, ...}``.
Non-finite numbers are written as ``null`` so every line is strict JSON. Lines are flushed as they are written,
so a crash keeps everything logged before it; on resume, :meth:`MetricsLogger.truncate_after` (or the
``resume_step`` argument) drops lines past the resumed step, and TensorBoard events past it are purged.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["METRICS_FILE", "TB_DIR", "MetricsLogger", "console_line", "plot_metrics", "plot_panels", "progress",
           "read_metrics"]

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
RUN_CONFIG_FILE = "run_config.json"
_SINKS = ("jsonl", "tensorboard", "wandb")
WANDB_STEP = "train/global_step"  # HF's step metric in W&B, so a resumed run may log a step again


def _json_value(key: str, value: Any) -> Any:
    """A JSON-safe scalar for ``value``: tensors/numpy scalars unwrapped, NaN/inf -> None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # torch.Tensor / numpy scalar with one element
        try:
            value = value.item()
        except (ValueError, RuntimeError) as e:
            raise TypeError(f"metric {key!r} must be a scalar, got {type(value).__name__} ({e})") from None
        if isinstance(value, bool):
            return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"metric {key!r} must be a number, bool, str or None, got {type(value).__name__}")


def _scalar(value: Any) -> float | None:
    """The float TensorBoard should get for ``value`` (None for strings/None)."""
    if value is None or isinstance(value, str):
        return None
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return float(value)


class MetricsLogger:
    """Append metrics to ``output_dir/metrics.jsonl`` and TensorBoard (``output_dir/tb``).

    ``report_to``: any of ``"jsonl"``, ``"tensorboard"``, ``"wandb"`` (``"none"`` or empty: log nothing). wandb
    logs into the W&B run already started in this process, else starts one (project ``$WANDB_PROJECT``, default
    ``latentrl``; run name = the output folder's name; config = ``run_config``) and finishes it on close.
    ``run_config``: written to ``output_dir/run_config.json`` and as TensorBoard text.
    ``resume_step``: when resuming, drop metrics logged after this step (see :meth:`truncate_after`).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        output_dir: str | Path,
        report_to: Sequence[str] | str = ("jsonl", "tensorboard"),
        run_config: Mapping[str, Any] | None = None,
        *,
        resume_step: int | None = None,
    ) -> None:
        if isinstance(report_to, str):
            report_to = [report_to]
        sinks = [s for s in report_to if s != "none"]
        unknown = [s for s in sinks if s not in _SINKS]
        if unknown:
            raise ValueError(f"unknown report_to {unknown}; supported: {', '.join(_SINKS)} (or 'none')")
        wandb = _import_wandb() if "wandb" in sinks else None
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.report_to = tuple(dict.fromkeys(sinks))
        self.metrics_path = self.output_dir / METRICS_FILE
        self.tb_dir = self.output_dir / TB_DIR
        self._file = None
        self._writer = None
        self._wandb_run, self._owns_wandb_run = None, False
        self._closed = False
        if "jsonl" in self.report_to:
            self._repair_partial_last_line()
        if resume_step is not None:
            self.truncate_after(resume_step)
        else:
            self._open(purge_step=None)
        if wandb is not None:
            self._start_wandb(wandb, run_config)
        if run_config is not None:
            from latentrl.checkpoint import atomic_write_json

            atomic_write_json(self.output_dir / RUN_CONFIG_FILE, dict(run_config))
            if self._writer is not None:
                text = json.dumps(dict(run_config), indent=2, default=str)
                self._writer.add_text("run_config", "```\n" + text + "\n```", 0)
                self._writer.flush()

    # -- sinks -----------------------------------------------------------------------------------------------
    def _open(self, purge_step: int | None) -> None:
        if "jsonl" in self.report_to and self._file is None:
            self._file = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        if "tensorboard" in self.report_to and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge_step)

    def _start_wandb(self, wandb: Any, run_config: Mapping[str, Any] | None) -> None:
        """Log into the caller's W&B run if one is active, else start one (closed by `close`). Steps go through
        HF's `train/global_step` metric, so a resumed run can log its steps again."""
        run = getattr(wandb, "run", None)
        if run is None:
            run = wandb.init(project=os.environ.get("WANDB_PROJECT", "latentrl"), name=self.output_dir.name,
                             dir=str(self.output_dir), config=dict(run_config or {}))
            self._owns_wandb_run = True
        run.define_metric(WANDB_STEP)
        run.define_metric("*", step_metric=WANDB_STEP, step_sync=True)
        self._wandb_run = run

    def _close_sinks(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _repair_partial_last_line(self) -> None:
        """A crash mid-write can leave a last line without its newline: drop it so new lines stay separate."""
        if not self.metrics_path.is_file() or self.metrics_path.stat().st_size == 0:
            return
        data = self.metrics_path.read_bytes()
        if data.endswith(b"\n"):
            return
        from latentrl.checkpoint import atomic_write_text

        cut = data.rfind(b"\n") + 1
        atomic_write_text(self.metrics_path, data[:cut].decode("utf-8", errors="replace"))

    # -- public API ------------------------------------------------------------------------------------------
    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Log ``metrics`` at ``step``; returns the JSON record written (non-finite values as None)."""
        if self._closed:
            raise RuntimeError("MetricsLogger.log() called after close()")
        if "step" in metrics:
            raise ValueError("'step' is reserved; pass it as the step argument")
        step = int(step)
        record: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            record[str(key)] = _json_value(str(key), value)
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                scalar = _scalar(value)
                if scalar is not None:
                    self._writer.add_scalar(str(key), scalar, step)
            self._writer.flush()
        if self._wandb_run is not None:
            scalars = {str(k): _scalar(v) for k, v in metrics.items()}
            self._wandb_run.log({**{k: v for k, v in scalars.items() if v is not None}, WANDB_STEP: step})
        return record

    def truncate_after(self, step: int) -> int:
        """Drop JSONL lines with ``step`` > ``step`` and purge later TensorBoard events; returns lines dropped.

        Call when resuming from the checkpoint of ``step`` so re-run steps are not logged twice.
        """
        if self._closed:
            raise RuntimeError("MetricsLogger.truncate_after() called after close()")
        self._close_sinks()
        dropped = 0
        if "jsonl" in self.report_to and self.metrics_path.is_file():
            kept = []
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    rec_step = json.loads(line).get("step")
                except (json.JSONDecodeError, AttributeError):
                    dropped += 1  # a corrupt line (crash mid-write): drop it
                    continue
                if isinstance(rec_step, (int, float)) and rec_step > step:
                    dropped += 1
                    continue
                kept.append(line)
            from latentrl.checkpoint import atomic_write_text

            atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))
        self._open(purge_step=int(step) + 1)
        return dropped

    def close(self) -> None:
        """Flush and close all sinks (idempotent); a W&B run this logger started is finished."""
        self._close_sinks()
        if self._wandb_run is not None and self._owns_wandb_run:
            self._wandb_run.finish()
        self._wandb_run = None
        self._closed = True

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import_wandb() -> Any:
    from latentrl.config import WANDB_MISSING

    try:
        import wandb
    except ImportError:
        raise ValueError(WANDB_MISSING) from None
    return wandb


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (or of the ``metrics.jsonl`` inside the directory ``path``).

    Blank lines are skipped; an unreadable line (e.g. cut by a crash) is skipped with a warning.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: skipping a line that is not valid JSON", stacklevel=2)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _ema(values: list[float], smoothing: float) -> list[float]:
    """TensorBoard-style debiased exponential moving average."""
    out, last, weight = [], 0.0, 0.0
    for v in values:
        last = smoothing * last + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out.append(last / weight)
    return out


def _plottable(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric names with at least one finite number logged, in first-logged order."""
    out: dict[str, None] = {}
    for r in records:
        if "step" not in r:
            continue
        for k, v in r.items():
            if k != "step" and k not in out and isinstance(v, (int, float)) and not isinstance(v, bool) \
                    and math.isfinite(v):
                out[k] = None
    return list(out)


def plot_panels(records: Sequence[Mapping[str, Any]], keys: Iterable[str], *, missing: str = "error"
                ) -> tuple[list[str], list[str]]:
    """(panels, not logged): the metric of each panel `plot_metrics` draws for `keys`, and the keys left out.

    A glob (``"clip_ratio/*"``) stands for the matching metrics that hold a finite number somewhere; a plain key
    must have one. ``missing="error"`` raises ValueError for a key or glob with nothing to draw, naming the metrics
    that were logged; ``"skip"`` leaves it out, so a default key list draws no empty panels."""
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    plottable = _plottable(records)
    logged = {k for r in records for k in r if k != "step"}
    panels: list[str] = []
    absent: list[str] = []
    for key in keys:
        matches = fnmatch.filter(plottable, key) if any(c in key for c in "*?[") else [k for k in (key,) if k in plottable]
        if not matches:
            if missing == "error":
                raise ValueError(_missing_key_message(key, logged, plottable))
            absent.append(key)
        panels += [m for m in matches if m not in panels]
    return panels, absent


def _missing_key_message(key: str, logged: set[str], plottable: list[str]) -> str:
    if key in logged:
        problem = f"metric {key!r} was logged, but with no finite value (only null / NaN / inf)"
    else:
        close = difflib.get_close_matches(key, plottable, n=1)
        problem = f"no metric {key!r} in the log" + (f" (did you mean {close[0]!r}?)" if close else "")
    return f"{problem}; metrics with values: {', '.join(plottable) or 'none'}"


def plot_metrics(
    metrics_jsonl: str | Path,
    out_png: str | Path,
    keys: Iterable[str],
    *,
    title: str | None = None,
    smoothing: float | None = None,
    missing: str = "error",
) -> Path:
    """Plot each metric in ``keys`` against step, one subplot per key, into ``out_png``.

    ``keys`` may contain glob patterns (``"clip_ratio/*"``); see :func:`plot_panels` for what becomes a panel and
    for ``missing`` (``"error"``: a key with nothing to draw raises ValueError before anything is written; ``"skip"``:
    it gets no panel). ``smoothing`` (0..1) overlays an EMA on the raw curve; None picks 0.6 for curves longer than
    30 points, else none. Uses the Agg renderer without touching pyplot's global state.
    """
    from matplotlib.figure import Figure

    records = read_metrics(metrics_jsonl)
    wanted, _ = plot_panels(records, list(keys), missing=missing)
    if not wanted:
        raise ValueError(f"none of the metrics {list(keys)} was logged with a value in {metrics_jsonl}; logged: "
                         f"{', '.join(_plottable(records)) or 'none'}")

    ncols = 1 if len(wanted) <= 3 else 2
    nrows = math.ceil(len(wanted) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 2.8 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for idx, key in enumerate(wanted):
        ax = axes[idx // ncols][idx % ncols]
        pts = [
            (r["step"], float(r[key]))
            for r in records
            if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and "step" in r
        ]
        pts = [(s, v) for s, v in pts if math.isfinite(v)]
        ax.set_title(key, fontsize=11)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        steps, values = zip(*pts)
        s = smoothing if smoothing is not None else (0.6 if len(values) > 30 else 0.0)
        if s > 0:
            ax.plot(steps, values, color="C0", alpha=0.3, linewidth=1, label="raw")
            ax.plot(steps, _ema(list(values), s), color="C0", linewidth=2, label=f"EMA {s:g}")
            ax.legend(fontsize=8, loc="best")
        else:
            ax.plot(steps, values, color="C0", linewidth=1.8, marker="o" if len(values) <= 50 else None, markersize=3)
    for idx in range(len(wanted), nrows * ncols):
        axes[idx // ncols][idx % ncols].set_visible(False)
    src = Path(metrics_jsonl)
    fig.suptitle(title or (src.parent.name if src.is_file() else src.name), fontsize=13)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


CONSOLE_KEYS = (("reward", "reward"), ("reward_std", "reward_std"), ("loss", "loss"), ("kl", "kl"),
                ("completions/mean_length", "len"), ("grad_norm", "grad_norm"), ("eval/pass_at_1", "eval_pass@1"))


def console_line(step: int, total: int, metrics: Mapping[str, Any], seconds_per_step: float | None = None) -> str:
    """One human line for a logged step (`step 10/40 | reward 0.512 | loss 0.0123 | ...`), printed by the trainers
    every `logging_steps` so batch jobs (nohup, CI, cluster logs) show progress where no progress bar is drawn."""
    parts = [f"step {step}/{total}"]
    for key, label in CONSOLE_KEYS:
        value = _scalar(metrics.get(key)) if metrics.get(key) is not None else None
        if value is not None:
            parts.append(f"{label} {value:.4g}")
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
    return " | ".join(parts)


def batch_console() -> bool:
    """True when stderr is not a terminal or `CI` is set: progress bars are off and log lines carry progress."""
    return _quiet()


def _quiet() -> bool:
    ci = os.environ.get("CI", "")
    if ci and ci.strip().lower() not in ("0", "false", "no"):
        return True
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):
        return True


def progress(total: int | None, description: str = "", *, disable: bool | None = None, **kwargs: Any):
    """A tqdm progress bar (``update``, ``set_postfix``, ``close``, context manager) for long work.

    Silent when stderr is not a TTY or the ``CI`` environment variable is set, unless ``disable`` is given.
    """
    from tqdm.auto import tqdm

    if disable is None:
        disable = _quiet()
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(total=total, desc=description, disable=disable, **kwargs)
