"""`latentrl bench`: every registered method on the CPU suite, same budget and seed, one results table.

For each (method, task): build the method's starting checkpoint (`Method.init`: the shipped CoT model, or a latent
SFT stage run from it and cached under the output folder), RL-train it with its CPU preset `configs/cpu/<name>.yaml`,
evaluate Pass@1 (greedy), Pass@k (sampled) and reasoning positions on the task's evaluation set, and write
`results.json`, `results.md` and `accuracy_vs_length.png`. Baselines (no-CoT SFT, CoT SFT) are evaluated as shipped.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentrl.assets import recorded_num_thoughts
from latentrl.checkpoint import atomic_write_json, atomic_write_text
from latentrl.config import SHIPPED_CONFIGS, GRPOConfig, load_config
from latentrl.data.provenance import TrainDraw, read_train_draws, training_questions
from latentrl.data.schema import Example

CONFIGS = SHIPPED_CONFIGS
CPU_PRESETS = CONFIGS / "cpu"


@dataclass
class SuiteTask:
    """One task of the CPU suite: where its shipped checkpoints are and what it is evaluated on.

    Evaluation data is a real file (`eval_source`) when one exists; otherwise it is generated from `eval_seed`,
    skipping every question the shipped models were pre-trained on (`pretrain_config`), so it is held out from
    pretraining as well as from the bench's own training data (`run_method` re-checks that).
    """

    name: str
    dataset: str  # training prompts (task name for synthetic data)
    cot_model: str  # asset name of the CoT-SFT checkpoint
    nocot_model: str
    max_completion_length: int
    dataset_kwargs: dict[str, Any]
    eval_source: str | None = None  # real evaluation file; None: generated (eval_seed)
    eval_seed: int | None = None
    pretrain_config: str | None = None  # the shipped models' `latentrl pretrain` YAML, relative to CONFIGS
    #: task-specific `key=value` overrides of a method's CPU preset (e.g. Coconut's thought count = #steps)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    #: task-specific overrides of a starting-checkpoint builder's preset (e.g. `coconut_sft`'s stages)
    init_overrides: dict[str, list[str]] = field(default_factory=dict)
    #: shipped checkpoints used instead of building an init (`scripts/train_latent_init.py`), by init name
    shipped_inits: dict[str, str] = field(default_factory=dict)

    def pretrain_questions(self) -> frozenset[str]:
        """Questions the shipped models were trained on (empty when there is no `pretrain_config`)."""
        if self.pretrain_config is None:
            return frozenset()
        return _pretrain_questions(str(CONFIGS / self.pretrain_config), self.dataset)

    def eval_examples(self, n: int) -> list[Example]:
        """The first `n` evaluation problems: the real file's, or generated ones outside the pretraining data."""
        from latentrl.data import load_examples, train_eval_split

        if self.eval_source is not None:
            return load_examples(self.eval_source)[:n]
        if self.eval_seed is None:
            raise ValueError(f"suite task {self.name!r} has neither an eval_source file nor an eval_seed")
        # the "train" side of a split with no eval part = n draws of eval_seed, none of them a banned question
        held_out, _ = train_eval_split(self.dataset, n, 0, self.eval_seed, exclude=self.pretrain_questions(),
                                       **self.dataset_kwargs)
        return held_out


@functools.lru_cache(maxsize=4)
def _pretrain_questions(config_path: str, dataset: str) -> frozenset[str]:
    """The training questions of a `latentrl pretrain` config (regenerated: ~80k draws take seconds, so cached)."""
    from latentrl.data import train_eval_split
    from latentrl.pretrain import PretrainConfig

    pc = load_config(PretrainConfig, config_path)
    if pc.task != dataset:
        raise ValueError(f"pretrain config {config_path} is for task {pc.task!r}, not {dataset!r}")
    train, _ = train_eval_split(pc.task, pc.num_train_examples, pc.num_eval_examples, pc.seed, **pc.difficulty)
    return frozenset(ex.question for ex in train)


def suite_tasks() -> dict[str, SuiteTask]:
    from latentrl.data.paths import real_data_file

    chain_steps = 7  # 8 operands -> 7 `<< x + y = z >>` steps, one Coconut stage / thought each
    coconut_chain = [f"latent.num_latent_steps={chain_steps}", f"latent.max_latent_steps={chain_steps}"]
    # icot_mult_4x4-coconut: 4 partial products x 3 thoughts + the column sums as 2 (read from the shipped init)
    icot_thoughts = recorded_num_thoughts("icot_mult_4x4-coconut") or 14
    icot_chain = [f"latent.num_latent_steps={icot_thoughts}", f"latent.max_latent_steps={icot_thoughts}"]
    return {
        "icot_mult_4x4": SuiteTask(
            name="icot_mult_4x4", dataset="icot_mult", eval_source=str(real_data_file("icot_mult_4x4/valid.txt")),
            cot_model="icot_mult_4x4-cot", nocot_model="icot_mult_4x4-nocot", max_completion_length=64,
            dataset_kwargs={"digits": 4},
            method_overrides={"coconut_grpo": icot_chain, "latent_rl": icot_chain,
                              "dlr": [f"dlr.num_latent_steps={icot_thoughts}"]},
            # the gated Coconut init on the column-sums chain (99.4 % of the real valid file at 14 thoughts,
            # docs/bench/icot_latent_init) and the superposition init (column sums kept whole, 14 latents, 88.9 %,
            # docs/bench/chain_sum/superposition_init), used when shipped
            shipped_inits={"coconut_sft": "icot_mult_4x4-coconut", "superposition_sft": "icot_mult_4x4-superposition"},
        ),
        # CoT = 7 steps of 7 tokens (49 reasoning positions) + `#### d` + eos; 60 as in the pretraining evaluation
        "chain_sum": SuiteTask(
            name="chain_sum", dataset="chain_sum", cot_model="chain_sum-cot", nocot_model="chain_sum-nocot",
            max_completion_length=60, dataset_kwargs={"length": 8, "modulus": 10, "ops": "+"},
            eval_seed=CHAIN_SUM_EVAL_SEED, pretrain_config="pretrain_chain_sum.yaml",
            method_overrides={"coconut_grpo": coconut_chain, "latent_rl": coconut_chain,
                              "dlr": [f"dlr.num_latent_steps={chain_steps}"]},
            # stages 1..7 replace one more step each (epochs 1..7), then 2 epochs with all 7 steps as thoughts;
            # batches of 64 keep the 9 epochs at ~290 steps (a CPU-time choice, docs/bench/chain_sum)
            init_overrides={"coconut_sft": [f"max_latent_stage={chain_steps}", f"num_epochs={chain_steps + 3}",
                                            "per_device_train_batch_size=64"]},
            # the gated Coconut init (100 % at 7 thoughts, docs/bench/chain_sum/latent_init) and the superposition
            # init (one latent per step, docs/bench/chain_sum/superposition_init), used when shipped
            shipped_inits={"coconut_sft": "chain_sum-coconut", "superposition_sft": "chain_sum-superposition"},
        ),
    }


CHAIN_SUM_EVAL_SEED = 271828  # a stream no training split of the suite draws from


# ---------------------------------------------------------------------------------------- starting checkpoints
InitBuilder = Callable[[SuiteTask, Path, bool], Path]
INIT_BUILDERS: dict[str, InitBuilder] = {}


def register_init(name: str):
    def deco(fn: InitBuilder) -> InitBuilder:
        INIT_BUILDERS[name] = fn
        return fn

    return deco


@register_init("cot_sft")
def _cot_init(task: SuiteTask, cache: Path, quick: bool) -> Path:
    from latentrl.assets import model_path

    return model_path(task.cot_model)


@register_init("superposition_sft")
def _superposition_init(task: SuiteTask, cache: Path, quick: bool) -> Path:
    from latentrl.inits import build_superposition_init

    return build_superposition_init(task, cache, quick)


@register_init("coconut_sft")
def _coconut_init(task: SuiteTask, cache: Path, quick: bool) -> Path:
    from latentrl.inits import build_coconut_init

    return build_coconut_init(task, cache, quick, overrides=task.init_overrides.get("coconut_sft", ()))


def build_init(name: str, task: SuiteTask, out: Path, quick: bool) -> Path:
    """The starting checkpoint `name` of `task`: the task's shipped one when it has one, else built and cached."""
    from latentrl.assets import available_models, model_path

    shipped = task.shipped_inits.get(name)
    if shipped is not None and shipped in available_models():
        return model_path(shipped)
    if name not in INIT_BUILDERS:
        raise ValueError(f"no builder for starting checkpoint {name!r}; known: {sorted(INIT_BUILDERS)}")
    return INIT_BUILDERS[name](task, out / "inits" / task.name, quick)


# ---------------------------------------------------------------------------------------- one run
def preset_path(method: str) -> Path:
    path = CPU_PRESETS / f"{method}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"method {method!r} has no CPU preset {path}")
    return path


def run_method(method_name: str, task: SuiteTask, out: Path, *, quick: bool, seed: int, k: int,
               num_eval: int, overrides: list[str] = ()) -> dict[str, Any]:
    """RL-train one method on one task (its preset, then the task's and the caller's overrides) and evaluate it."""
    from latentrl.eval import evaluate
    from latentrl.methods import get_method
    from latentrl.model import LatentModel

    method = get_method(method_name)
    init_path = build_init(method.init, task, out, quick)
    run_dir = out / "runs" / f"{method_name}-{task.name}"
    extra = [f"model_name_or_path={init_path}", f"output_dir={run_dir}", f"seed={seed}", f"method={method_name}",
             f"max_completion_length={task.max_completion_length}", "save_steps=0", "save_total_limit=1",
             "overwrite_output_dir=true", "log_to_console=false"]  # a re-run replaces its own run folders
    if quick:
        extra.append("max_steps=" + str(QUICK_STEPS))
    cfg = load_config(GRPOConfig, preset_path(method_name),
                      [*extra, *task.method_overrides.get(method_name, ()), *overrides])
    model = LatentModel.from_pretrained(init_path, add_latent_tokens=True)
    prompts = rl_prompts(task, init_path, cfg.num_train_examples, seed)
    train = prompts.examples
    evals = task.eval_examples(num_eval)
    check_disjoint(task, train, evals)
    t0 = time.perf_counter()
    trainer = method.trainer_class(cfg, model, train)
    trainer.train_data = prompts.record
    trainer.train()
    train_wall = time.perf_counter() - t0
    res = evaluate(model, evals, operator=trainer.operator,
                   schedule=trainer.schedule, max_new_positions=task.max_completion_length, k=k, seed=seed,
                   prompt_text=trainer.prompt_text, temperature=cfg.temperature,
                   decode_latent=trainer.parts.decode_latent)  # as training and `latentrl eval` score
    from latentrl.thought_dependence import trainer_thought_dependence

    dep = trainer_thought_dependence(trainer, evals)  # None without latent positions
    return {**row(method_name, task.name, res, train_wall, method.init, run_dir, dep),
            "rl_prompts_excluded": prompts.n_excluded}


@dataclass
class RLPrompts:
    """An RL run's prompts off the starting checkpoint's training problems, and what to record about them."""

    examples: list[Example]
    #: how many questions the starting checkpoint's recorded draws held (all left out of `examples`)
    n_excluded: int
    #: what the run trained on, for its checkpoints' `train_data.json` (as `latentrl train` writes): the init's
    #: recorded draws, then the prompt draw, which names the init's draws of this dataset as skipped
    record: list[TrainDraw]


def rl_prompts(task: SuiteTask, init_path: str | Path, n: int, seed: int) -> RLPrompts:
    """`n` RL prompts from the task's train stream, none of them a problem the starting checkpoint trained on (its
    recorded `train_data`: a latent init that saw its problems hundreds of times scores far higher on them, so RL on
    them rewards memory, docs/bench/rl_prompts)."""
    from latentrl.data import load_examples

    seen = training_questions(init_path, task.dataset)
    kw = {"exclude": seen} if seen else {}
    examples = load_examples(task.dataset, split="train", n=n, seed=seed, **kw, **task.dataset_kwargs)
    init = read_train_draws(init_path)
    skipped = tuple(d for d in init if d.dataset == task.dataset)
    record = [*init, TrainDraw.of_train_split(task.dataset, n, seed, excluded=skipped, **task.dataset_kwargs)]
    return RLPrompts(examples, len(seen), record)


def check_disjoint(task: SuiteTask, train: list[Example], evals: list[Example]) -> None:
    """Refuse to score a run on problems it trained on."""
    shared = {ex.question for ex in train} & {ex.question for ex in evals}
    if shared:
        raise ValueError(f"suite task {task.name!r}: {len(shared)} evaluation questions are also training questions "
                         f"(e.g. {sorted(shared)[0]!r}); the eval set must be held out")


def eval_checkpoint(label: str, path: Path, task: SuiteTask, *, k: int, seed: int, num_eval: int,
                    temperature: float = 1.0) -> dict[str, Any]:
    """A shipped token model (CoT / no-CoT SFT), Pass@k sampled at `temperature` (1.0: plain sampling)."""
    from latentrl.eval import evaluate
    from latentrl.model import LatentModel

    model = LatentModel.from_pretrained(path)
    res = evaluate(model, task.eval_examples(num_eval), max_new_positions=task.max_completion_length,
                   k=k, seed=seed, temperature=temperature)
    return row(label, task.name, res, 0.0, "shipped checkpoint", path)


#: the method whose operator reads a latent starting checkpoint, for that checkpoint's own row (before any RL)
INIT_READERS = {"coconut_sft": "coconut_grpo", "superposition_sft": "latent_grpo"}


def eval_init(init_name: str, task: SuiteTask, out: Path, *, quick: bool, seed: int, k: int,
              num_eval: int) -> dict[str, Any]:
    """A latent starting checkpoint scored as the RL rows that start from it are (its reader's preset, operator,
    schedule and thought check), before any RL step: the row those RL rows are measured against."""
    from latentrl.assets import MODELS_DIR
    from latentrl.eval import evaluate
    from latentrl.methods import get_method
    from latentrl.model import LatentModel
    from latentrl.thought_dependence import method_thought_dependence

    reader = INIT_READERS[init_name]
    path = build_init(init_name, task, out, quick)
    cfg = load_config(GRPOConfig, preset_path(reader),
                      [f"model_name_or_path={path}", f"output_dir={out / 'runs' / f'{init_name}-{task.name}'}",
                       f"seed={seed}", f"method={reader}", f"max_completion_length={task.max_completion_length}",
                       "report_to=[none]", *task.method_overrides.get(reader, ())])
    model = LatentModel.from_pretrained(path, add_latent_tokens=True)
    parts = get_method(reader).build(model, cfg)
    evals = task.eval_examples(num_eval)
    res = evaluate(model, evals, k=k, temperature=cfg.temperature, **parts.eval_kwargs(cfg))
    dep = method_thought_dependence(model, parts, cfg, evals)
    where = "shipped checkpoint" if Path(path).parent == MODELS_DIR else "built"
    return row(init_name, task.name, res, 0.0, where, path, dep)


def row(method: str, task: str, res, train_wall: float, init: str, where: Path, dep=None) -> dict[str, Any]:
    """One results row; `dep` is the thought-dependence check (`latentrl.thought_dependence`) of a latent run."""
    return {
        "thought_dependence": dep.to_dict() if dep is not None else None,
        "method": method, "task": task, "pass_at_1": res.pass_at_1, "pass_at_k": res.pass_at_k, "k": res.k,
        "mean_reasoning_positions": res.mean_reasoning_positions, "mean_latent_positions": res.mean_latent_positions,
        "train_wall_s": round(train_wall, 1), "eval_wall_s": round(res.wall_s, 1), "n_eval": res.n, "init": init,
        "pass_at_k_temperature": res.temperature, "truncated": res.truncated,
        "sampled_pass_at_1": res.sampled_pass_at_1, "run_dir": str(where), "samples": res.samples,
    }


QUICK_STEPS = 20


# ---------------------------------------------------------------------------------------- reporting
def points_se(x: float, se: float | None) -> str:
    """A difference in percentage points with its standard error ("12.0 ± 1.5"; no SE from a single pair)."""
    return f"{100 * x:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def percent_se(p: float, n: int) -> str:
    """`p` as a percentage with its binomial standard error, e.g. `47.0 ± 1.6`."""
    from latentrl.eval import binomial_se

    return f"{100 * p:.1f} ± {100 * binomial_se(p, n):.1f}"


def results_markdown(rows: list[dict[str, Any]]) -> str:
    """The results table; accuracies in % with their binomial standard error over the row's n problems. Sampled
    Pass@1 (the mean fraction of the k samples right: the accuracy of what RL trains on) is "—" for rows recorded
    before it was measured."""
    head = ("| method | task | init | n | Pass@1 ± SE | Pass@k ± SE (k, T) | sampled Pass@1 | reasoning positions "
            "| latent positions | train s | swap / zero drop |\n")
    head += "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        n = r["n_eval"]
        pk = "—"
        if r["pass_at_k"] is not None:
            pk = f"{percent_se(r['pass_at_k'], n)} ({r['k']}, {r.get('pass_at_k_temperature', 1.0):g})"
        s1 = f"{100 * r['sampled_pass_at_1']:.1f}" if r.get("sampled_pass_at_1") is not None else "—"
        lines.append(f"| {r['method']} | {r['task']} | {r['init']} | {n} | {percent_se(r['pass_at_1'], n)} | {pk} | {s1} | "
                     f"{r['mean_reasoning_positions']:.1f} | {r['mean_latent_positions']:.1f} | {r['train_wall_s']:.0f} | "
                     f"{_drops(r.get('thought_dependence'))} |")
    return head + "\n".join(lines) + "\n"


def _drops(dep: dict[str, Any] | None) -> str:
    """Pass@1 points lost with thoughts swapped between problems / zeroed ("—" without latent positions)."""
    if not dep:
        return "—"
    return f"{100 * dep['drop_swap']:.1f} / {100 * dep['drop_zero']:.1f}"


def plot_accuracy_vs_length(rows: list[dict[str, Any]], out_png: Path) -> None:
    """Pass@1 against mean reasoning positions: one panel per task, one colour per method across panels (a legend,
    not labels, because methods that reason alike land on the same point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cmap = plt.get_cmap("tab20")
    # the 10 dark tab20 hues first, then their light partners; baselines as squares
    style = {m: (cmap((2 * i) % 20 + (2 * i // 20) % 2), "s" if m in ("nocot_sft", "cot_sft") else "o")
             for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks) + 2.2, 4.5), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r["task"] == task):
            color, marker = style[r["method"]]
            ax.scatter(r["mean_reasoning_positions"], 100 * r["pass_at_1"], s=60, color=color, marker=marker,
                       edgecolors="black", linewidths=0.4, alpha=0.9, label=r["method"])
        ax.set_title(task)
        ax.set_xlabel("mean reasoning positions per answer (latent + token)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Pass@1 (%)")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.collections}
    fig.legend([handles[m] for m in methods if m in handles], [m for m in methods if m in handles],
               loc="center right", fontsize=8, frameon=False)
    fig.suptitle("Accuracy vs reasoning length")
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def run_bench(out: Path, *, quick: bool, methods: list[str] | None, tasks: list[str] | None, seed: int = 0,
              k: int = 4, num_eval: int | None = None) -> list[dict[str, Any]]:
    """Every method (default: all registered) on every suite task (default: all) into `out`. A folder that holds
    an earlier bench run with the same settings keeps that run's other rows (a method or task re-run replaces its
    own); one with other settings is refused, so results of two budgets never share a table."""
    from latentrl.assets import model_path
    from latentrl.methods import METHODS, get_method

    num_eval = num_eval or (100 if quick else 1000)
    all_tasks = suite_tasks()
    unknown = sorted(set(tasks or ()) - set(all_tasks))
    if unknown:
        datasets = {t.dataset: name for name, t in all_tasks.items()}
        hint = "".join(f" (dataset {u!r} is suite task {datasets[u]!r})" for u in unknown if u in datasets)
        raise ValueError(f"unknown suite task(s) {', '.join(unknown)}; known: {', '.join(all_tasks)}{hint}")
    for name in methods or ():
        get_method(name)  # an unknown method fails before anything runs or is written
    settings = {"quick": quick, "seed": seed, "k": k, "num_eval": num_eval}
    rows = {(r["method"], r["task"]): r for r in earlier_rows(out, settings)}
    if rows:
        print(f"bench: {out} holds {len(rows)} rows of an earlier run with the same settings; rows re-run here "
              "replace theirs, the others stay", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SETTINGS_FILE, settings)

    def add(row_: dict[str, Any]) -> None:
        rows[(row_["method"], row_["task"])] = row_
        write_results(out, table_order(list(rows.values())))  # keep partial results if a later method fails

    for tname in tasks or list(all_tasks):
        task = all_tasks[tname]
        add(eval_checkpoint("nocot_sft", model_path(task.nocot_model), task, k=k, seed=seed, num_eval=num_eval))
        add(eval_checkpoint("cot_sft", model_path(task.cot_model), task, k=k, seed=seed, num_eval=num_eval))
        starts = {get_method(name).init for name in methods or METHODS}
        for init_name in sorted(starts & set(INIT_READERS)):  # the latent inits, before RL
            add(eval_init(init_name, task, out, quick=quick, seed=seed, k=k, num_eval=num_eval))
        for name in methods or sorted(METHODS):
            add(run_method(name, task, out, quick=quick, seed=seed, k=k, num_eval=num_eval))
    return table_order(list(rows.values()))


def table_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows task by task (in the order the tasks first appear): the baselines, then the latent inits, then the
    methods by name, so an RL row sits below the start it is read against whatever order they were run in."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    baselines = ("nocot_sft", "cot_sft")

    def key(r: dict[str, Any]) -> tuple:
        m = r["method"]
        group = 0 if m in baselines else 1 if m in INIT_READERS else 2
        return tasks.index(r["task"]), group, baselines.index(m) if group == 0 else m

    return sorted(rows, key=key)


SETTINGS_FILE = "bench_settings.json"
"""What a bench folder's rows were run with (quick, seed, k, num_eval): rows of other settings never mix."""


def earlier_rows(out: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows (with their samples) of an earlier bench run in `out` with these `settings`; [] for a new folder.
    Refuses a folder whose results were run with other (or unrecorded) settings."""
    if not (out / "results.json").is_file():
        return []
    saved = json.loads((out / SETTINGS_FILE).read_text()) if (out / SETTINGS_FILE).is_file() else None
    if saved != settings:
        raise ValueError(f"{out} holds bench results run with other settings ({saved or 'not recorded'}; this run: "
                         f"{settings}): choose another --out, or the same settings to add rows to it")
    rows = json.loads((out / "results.json").read_text())
    samples_file = out / "samples.json"
    kept = json.loads(samples_file.read_text()) if samples_file.is_file() else []
    if [s["method"] for s in kept] == [r["method"] for r in rows]:  # written together, row by row (older files
        return [{**r, "samples": s["samples"]} for r, s in zip(rows, kept)]  # name no task)
    samples = {(s["method"], s.get("task")): s["samples"] for s in kept}
    return [{**r, "samples": samples.get((r["method"], r.get("task")), [])} for r in rows]


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_json(out / "results.json", [{k: v for k, v in r.items() if k != "samples"} for r in rows])
    atomic_write_text(out / "results.md", results_markdown(rows))
    samples = [{"method": r["method"], "task": r["task"], "samples": r["samples"]} for r in rows]
    (out / "samples.json").write_text(json.dumps(samples, indent=1))
    plot_accuracy_vs_length(rows, out / "accuracy_vs_length.png")
