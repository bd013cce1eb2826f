"""The documentation states facts the code can confirm; these tests confirm them.

The conventions the pages follow (docs/methods/README.md describes them for authors):

* **At-a-glance table** (header `| | |`): a `method` row names the registered method(s) the page documents
  (backticked; the first one is the page's main method) and an `operator` row the thought operator they build
  (its registered name, or `none`).
* **Config tables**: a table whose header starts with `field | default` (or `` `ClassName` field | default ``) lists
  backticked field names (several per row, comma-separated) and their backticked YAML defaults, in the same order.
  The class is `GRPOConfig` (dotted names for `latent.*` / `dlr.*`) unless the header names another one. A column
  whose header is a backticked `.yaml` path states that preset's values (cells without backticks are not checked).
* **Metric tables**: a table whose header starts with `metric` lists backticked metric names (`*` and `<name>` are
  wildcards); each must be logged by one tiny training step of the page's main method.
* **Commands**: every `latentrl ...` command parses with the CLI; on method pages and the quickstart it must be
  complete (its `--config` exists, every `key=value` override is a valid key). Elsewhere (README.md,
  docs/benchmarks.md, which use placeholders) and for a bare `latentrl <sub-command>` mention, only the sub-command,
  the named repository files and the `--methods` names are checked.
* **Links and paths**: relative links and backticked repository paths (`src/...`, `configs/...`) exist; paths in a
  paragraph that names a github.com repository are the authors' and are not checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import math
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from latentrl.cli import ARG_BUILDERS, COMMANDS, _add_train_args
from latentrl.config import GRPOConfig, config_from_dict, load_config
from latentrl.methods import METHODS, get_method
from latentrl.testing import word_count_reward

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
METHOD_PAGES = sorted(p for p in (DOCS / "methods").glob("*.md") if p.name != "README.md")
STRICT_COMMAND_PAGES = [*METHOD_PAGES, DOCS / "quickstart.md"]
ALL_PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
REPO_PATH = re.compile(r"^(src|configs|tests|docs|scripts|benchmarks)/[\w./*-]+$")


# ------------------------------------------------------------------------------------------------ markdown parsing
def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose_lines(text: str) -> list[str]:
    """The page's lines with fenced code blocks blanked out (tables and spans inside code are not facts)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return out


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).strip(), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)]


def _cells(line: str) -> list[str]:
    """Table cells; `\\|` is an escaped pipe inside a cell (GitHub renders it as `|`)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table outside code blocks: (header cells, body rows)."""
    found, block = [], []
    for line in [*_prose_lines(text), ""]:
        if line.strip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and set(block[1].replace("|", "").strip()) <= set("-: "):
            found.append((_cells(block[0]), [_cells(b) for b in block[2:]]))
        block = []
    return found


def spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def glance(text: str) -> dict[str, str]:
    """The at-a-glance table (empty header cells) as {row name: cell}."""
    for header, rows in tables(text):
        if all(not h for h in header):
            return {r[0].strip().lower(): r[1] for r in rows if len(r) >= 2}
    return {}


def page_methods(path: Path) -> list[str]:
    g = glance(path.read_text())
    return [m for m in spans(g.get("method", g.get("methods", ""))) if re.fullmatch(r"\w+", m)]


# ------------------------------------------------------------------------------------------------ config defaults
def _flatten(cfg, prefix: str = "") -> dict:
    """Dotted option name -> value; every nested config section (latent.*, lora.*, a method's mounted one) is
    flattened, so a new section needs no entry here."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = _plain(value)
    return out


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@cache
def defaults_of(cls_name: str) -> dict:
    """Field name -> default of a documented options class."""
    if cls_name == "GRPOConfig":
        return _flatten(GRPOConfig(model_name_or_path="x"))
    if cls_name == "CoconutConfig":
        from latentrl.sft.coconut import CoconutConfig

        return _flatten(CoconutConfig())
    if cls_name == "LatentGRPOOptions":
        from latentrl.methods.latent_grpo import LatentGRPOOptions

        return dataclasses.asdict(LatentGRPOOptions())
    raise AssertionError(f"config table names an unknown options class {cls_name!r}")


@cache
def preset_values(cls_name: str, path: str) -> dict:
    if cls_name == "CoconutConfig":
        from latentrl.sft.coconut import CoconutConfig

        return _flatten(load_config(CoconutConfig, ROOT / path))
    assert cls_name == "GRPOConfig", f"presets are documented for GRPOConfig / CoconutConfig, not {cls_name}"
    return _flatten(load_config(GRPOConfig, ROOT / path))


def same(actual, documented) -> bool:
    if isinstance(actual, tuple):
        actual = list(actual)
    if isinstance(actual, bool) or isinstance(documented, bool):
        return actual is documented
    if isinstance(actual, (int, float)) and isinstance(documented, (int, float)):
        return math.isclose(actual, documented, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(actual, list) and isinstance(documented, list):
        return len(actual) == len(documented) and all(same(a, b) for a, b in zip(actual, documented))
    return actual == documented


def config_rows():
    for page in ALL_PAGES:
        for header, rows in tables(page.read_text()):
            m = re.fullmatch(r"(?:`(\w+)` )?field", header[0])
            if not m or len(header) < 2 or header[1] != "default":
                continue
            cls = m.group(1) or "GRPOConfig"
            presets = {i: spans(h)[0] for i, h in enumerate(header) if spans(h) and spans(h)[0].endswith(".yaml")}
            for row in rows:
                yield pytest.param(page, cls, presets, row, id=f"{page.name}:{spans(row[0])[0] if spans(row[0]) else row[0]}")


@pytest.mark.parametrize("page, cls, presets, row", list(config_rows()))
def test_config_table_row_matches_the_code(page, cls, presets, row):
    names = spans(row[0])
    assert names, f"{_rel(page)}: config row {row} names no backticked field"
    defaults = spans(row[1])
    assert len(defaults) == len(names), (
        f"{_rel(page)}: {names} has {len(defaults)} backticked default(s) {defaults}; write one per field")
    known = defaults_of(cls)
    for name, text in zip(names, defaults):
        assert name in known, f"{_rel(page)}: {cls} has no field {name!r}"
        assert same(known[name], yaml.safe_load(text)), (
            f"{_rel(page)}: {cls}.{name} defaults to {known[name]!r}, the page says {text!r}")
    for col, path in presets.items():
        if col >= len(row) or not spans(row[col]):
            continue
        values = spans(row[col])
        assert len(values) == len(names), f"{_rel(page)}: {path} column of {names} has values {values}"
        preset = preset_values(cls, path)
        for name, text in zip(names, values):
            assert same(preset[name], yaml.safe_load(text)), (
                f"{_rel(page)}: {path} sets {name} = {preset[name]!r}, the page says {text!r}")


def test_every_page_has_a_checked_config_table():
    for page in METHOD_PAGES:
        headers = [h for h, _ in tables(page.read_text())]
        assert any(re.fullmatch(r"(?:`\w+` )?field", h[0]) and h[1:2] == ["default"] for h in headers), (
            f"{_rel(page)} has no `field | default` table")


# ------------------------------------------------------------------------------------------------ method registry
def test_every_registered_method_has_a_page_and_every_page_method_exists():
    documented = {m: p for p in METHOD_PAGES for m in page_methods(p)}
    assert set(documented) == set(METHODS), (
        f"undocumented: {sorted(set(METHODS) - set(documented))}; unknown: {sorted(set(documented) - set(METHODS))}")


def test_every_registered_method_has_a_reproduce_command():
    text = "\n".join(p.read_text() for p in METHOD_PAGES)
    listed = set()
    for cmd in re.findall(r"latentrl bench [^`\n]*", text):
        m = re.search(r"--methods[ =](\S+)", cmd)
        if m:
            listed |= set(m.group(1).split(","))
    assert set(METHODS) <= listed, f"no `latentrl bench --methods` command for {sorted(set(METHODS) - listed)}"


# ------------------------------------------------------------------------------------------------ tiny runs


#: per method: options that switch on every metric the page lists (KL, dynamic sampling, DLR's NLL term)
def smoke_overrides(method: str) -> dict:
    """The method's own `smoke_overrides` (dotted keys) as a nested config dict: no hand-kept table per method."""
    out: dict = {}
    for key, value in METHODS[method].smoke_overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


@cache
def tiny_run(method: str, tmp: str) -> tuple[str, frozenset]:
    """One optimizer step of `method` on a tiny random model: (operator name, metric keys in metrics.jsonl)."""
    from latentrl.data import make_examples, task_vocabulary
    from latentrl.logger import read_metrics
    from latentrl.testing import tiny_latent_model

    out = Path(tmp) / method
    cfg = config_from_dict(GRPOConfig, {
        "model_name_or_path": "tiny", "output_dir": str(out), "method": method, "max_steps": 1, "save_steps": 0,
        "per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 10, "learning_rate": 1e-3,
        "report_to": ["jsonl"], "reward_funcs": ["correctness"], **smoke_overrides(method)})  # rewards replaced below
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    data = make_examples("chain_sum", 16, seed=0, length=3)
    impl = get_method(method)
    trainer = impl.trainer_class(cfg, lm, data, reward_funcs=[word_count_reward], method=impl, eval_dataset=data[:4])
    trainer.train()
    keys = frozenset(k for rec in read_metrics(out) for k in rec)
    return (trainer.operator.name if trainer.operator is not None else "none"), keys


@cache
def coconut_sft_keys(tmp: str) -> frozenset:
    """Metric keys of a tiny Coconut curriculum SFT run (metrics.jsonl)."""
    from latentrl.data import make_examples, task_vocabulary
    from latentrl.logger import read_metrics
    from latentrl.sft.coconut import CoconutConfig, train_coconut
    from latentrl.testing import tiny_latent_model

    out = Path(tmp) / "coconut_sft"
    cfg = CoconutConfig(max_latent_stage=1, epochs_per_stage=1, num_epochs=2, per_device_train_batch_size=4,
                        logging_steps=1, output_dir=str(out), eval_batch_size=4, disable_tqdm=True)
    data = make_examples("chain_sum", 4, seed=0, length=3)
    train_coconut(cfg, tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0), data, data[:2])
    # and the gated curriculum with the thought probe and distillation (gate/*, stage/*, probe_*, distill_* records)
    gated = Path(tmp) / "coconut_sft_gated"
    teacher = Path(tmp) / "coconut_teacher"
    tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=1, add_latent_tokens=False).save_pretrained(teacher)
    cfg = CoconutConfig(max_latent_stage=1, start_stage=1, stage_advance="converged", gate_eval_steps=1,
                        max_steps_per_stage=1, probe_tokens=[-1], per_device_train_batch_size=4, logging_steps=1,
                        distill_weight=1.0, distill_teacher=str(teacher), output_dir=str(gated), eval_batch_size=4,
                        disable_tqdm=True)
    train_coconut(cfg, tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0), data, data[:2])
    return frozenset(k for d in (out, gated) for rec in read_metrics(d) for k in rec)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny_runs"))


@pytest.mark.parametrize("page", METHOD_PAGES, ids=lambda p: p.name)
def test_operator_named_on_the_page_is_the_one_the_method_builds(page, run_dir):
    g = glance(page.read_text())
    assert "operator" in g, f"{_rel(page)}: the at-a-glance table has no operator row"
    documented = spans(g["operator"])[0] if spans(g["operator"]) else g["operator"].split()[0]
    for method in page_methods(page):
        built, _ = tiny_run(method, run_dir)
        assert built == documented, f"{_rel(page)}: method {method} builds operator {built!r}, the page says {documented!r}"


def _metric_names(page: Path) -> list[str]:
    names = []
    for header, rows in tables(page.read_text()):
        if header[0] == "metric":
            names += [n for r in rows for n in spans(r[0])]
    return names


@pytest.mark.parametrize("page", METHOD_PAGES, ids=lambda p: p.name)
def test_metrics_listed_on_the_page_are_logged(page, run_dir):
    names = _metric_names(page)
    assert names, f"{_rel(page)} has no `metric | meaning` table"
    methods = page_methods(page)
    keys = tiny_run(methods[0], run_dir)[1] if methods else coconut_sft_keys(run_dir)
    missing = [n for n in names if not any(fnmatch.fnmatchcase(k, re.sub(r"<[^>]+>", "*", n)) for k in keys)]
    assert not missing, f"{_rel(page)} lists metrics that are not logged: {missing}; logged: {sorted(keys)}"


# ------------------------------------------------------------------------------------------------ commands
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentrl")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        ARG_BUILDERS.get(name, _add_train_args)(sub.add_parser(name))
    return parser


def commands(page: Path) -> list[str]:
    """Every `latentrl ...` command in the page's inline code and shell code blocks."""
    text = page.read_text()
    found = [s for s in re.findall(r"`(latentrl [^`]+)`", "\n".join(_prose_lines(text)))]
    for lang, body in _code_blocks(text):
        if lang not in ("", "bash", "sh", "console", "shell"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            found += [seg.strip() for seg in line.split("&&") if seg.strip().startswith("latentrl ")]
    return found


def command_params():
    for page in ALL_PAGES:
        strict = page in STRICT_COMMAND_PAGES
        for cmd in commands(page):
            yield pytest.param(page, cmd, strict, id=f"{page.name}:{cmd[:60]}")


@pytest.mark.parametrize("page, cmd, strict", list(command_params()))
def test_documented_command_parses(page, cmd, strict):
    argv = shlex.split(cmd)[1:]
    assert argv and argv[0] in COMMANDS, f"{_rel(page)}: `{cmd}`: no sub-command {argv[:1]} (have {sorted(COMMANDS)})"
    for token in argv:
        if REPO_PATH.match(token.split("=")[-1]):
            assert list(ROOT.glob(token.split("=")[-1])), f"{_rel(page)}: `{cmd}`: {token} does not exist"
    m = re.search(r"--methods[ =](\S+)", cmd)
    if m:
        assert set(m.group(1).split(",")) <= set(METHODS), f"{_rel(page)}: `{cmd}` names an unregistered method"
    if not strict or len(argv) == 1:  # README / benchmarks prose, or a bare mention of a sub-command
        return
    try:
        ns = _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{_rel(page)}: `{cmd}` does not parse with the latentrl CLI")
    if getattr(ns, "resume", False) and not ns.config:
        return  # `--resume output_dir=RUN`: the settings are the run's own run_config.json, not on the page
    if ns.command in ("train", "eval", "coconut-sft") and not getattr(ns, "help_config", False):
        from latentrl.sft.coconut import CoconutConfig

        cls = CoconutConfig if ns.command == "coconut-sft" else GRPOConfig
        overrides = list(ns.overrides)
        if ns.command == "eval":
            overrides.append(f"model_name_or_path={ns.model}")
        config = ROOT / ns.config if ns.config and not Path(ns.config).is_absolute() else ns.config
        load_config(cls, config, overrides)  # raises ConfigError naming a bad key, value or missing file


# ------------------------------------------------------------------------------------------------ links and paths
def test_relative_links_point_to_existing_files():
    bad = []
    for page in ALL_PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", "\n".join(_prose_lines(page.read_text()))):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                bad.append(f"{_rel(page)} -> {target}")
    assert not bad, f"broken links: {bad}"


def test_backticked_repository_paths_exist():
    bad = []
    for page in [*METHOD_PAGES, DOCS / "quickstart.md", DOCS / "methods" / "README.md"]:
        paragraphs = "\n".join(_prose_lines(page.read_text())).split("\n\n")
        for span in [s for para in paragraphs if "github.com" not in para for s in spans(para)]:
            if REPO_PATH.match(span) and not list(ROOT.glob(span.rstrip("/"))):
                bad.append(f"{_rel(page)}: {span}")
    assert not bad, f"paths named in the docs that do not exist: {bad}"
