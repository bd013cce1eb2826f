"""Every paper preset (`configs/*.yaml`, top level) runs unchanged through the CLI a user would call.

Only what cannot exist on this machine is replaced: the hub / local model by a tiny random-weight model of the same
architecture family and checkpoint layout (chat template, latent tokens, value head), the data file by a tiny file
in the real dataset's row format, the sizes (steps, batch, completion length) and the output folder. The run config
the trainer writes is compared with the preset: it may differ in exactly those keys. Each run must finish, log
finite metrics, write its checkpoint under `output_dir`, build the method's modules, and
resume from that checkpoint with `latentrl train --resume` (`latentrl coconut-sft --resume` for the Coconut preset).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from latentrl.checkpoint import COMPLETE_MARKER
from latentrl.cli import main
from latentrl.config import GRPOConfig, config_to_dict, load_config
from latentrl.logger import RUN_CONFIG_FILE, read_metrics
from latentrl.model import ADAPTER_CONFIG_FILE, LATENT_META_FILE, SIDE_MODULES_FILE, LatentModel
from latentrl.rl.trainer import num_warmup_steps
from latentrl.sft.coconut import CoconutConfig
from latentrl.testing import tiny_latent_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("pretrain_"))

# Qwen2.5-Instruct's chat layout (ChatML): what `prompt_format: chat` renders with the real tokenizer.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT_SPECIAL = ["<|im_start|>", "<|im_end|>"]

# --------------------------------------------------------------------------------------------------- data fixtures
# Rows in the real datasets' columns (the presets' comments name each dataset; see `latentrl.data.formats`).


def gsm8k_rows() -> list[dict]:
    """openai/gsm8k (config `main`): question, answer = 'reasoning\\n#### 42'."""
    return [json.loads(line) for line in (FIXTURES / "gsm8k_small.jsonl").read_text().splitlines() if line.strip()]


def openr1_rows() -> list[dict]:
    """OpenR1-Math-220k (`default`): problem, solution, answer and the provenance / generation columns."""
    base = {"problem_type": "Algebra", "question_type": "math-word-problem", "source": "olympiads",
            "is_reasoning_complete": [True], "correctness_math_verify": [True], "correctness_llama": None,
            "finish_reasons": None, "correctness_count": 1}
    return [
        {**base, "problem": "Find $x$ if $2x + 3 = 11$.", "solution": "Subtract 3 and halve: $x=\\boxed{4}$.",
         "answer": "4", "uuid": "a1", "generations": ["<think>2x = 8</think> x = \\boxed{4}"]},
        {**base, "problem": "Compute $3 \\cdot 7 - 5$.", "solution": "$21 - 5 = \\boxed{16}$.", "answer": "16",
         "uuid": "a2", "generations": ["<think>21 - 5</think> \\boxed{16}"]},
        {**base, "problem": "Simplify $\\frac{6}{8}$.", "solution": "$\\boxed{\\frac{3}{4}}$.",
         "answer": "\\frac{3}{4}", "uuid": "a3", "generations": ["\\boxed{\\frac{3}{4}}"]},
    ]


def gsm8k_aug_jsonl_rows() -> list[dict]:
    """Latent-GRPO's GSM8k-Aug JSON lines (HF DJCheng/Latent-GRPO-Data): `problem` and `answer` (their
    data_preprocess_code/gsm8k_aug.py reads `item["problem"]` and `str(item["answer"])`)."""
    return [{"problem": "Ann has 3 apples and buys 4 more. She eats 2. How many apples are left?", "answer": "5"},
            {"problem": "A box holds 12 pens. How many pens are in 3 boxes?", "answer": 36},
            {"problem": "Tim has 7 marbles and finds 3. How many now?", "answer": "10"}]


def dapo_en_rows() -> list[dict]:
    """DAPO-Math-17k, subset `en` (open-r1/DAPO-Math-17k-Processed): the 0-shot question as `prompt`, the answer
    as `solution` and `reward_model.ground_truth`, the original chat prompt as `source_prompt`."""
    def row(i: int, question: str, answer: str) -> dict:
        instruction = ("Solve the following math problem step by step. The last line of your response should be of "
                       "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
        return {"prompt": question, "solution": answer, "data_source": "math_dapo",
                "source_prompt": [{"role": "user", "content": instruction + question}], "ability": "MATH",
                "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
                "extra_info": {"index": f"idx-{i}"}}
    return [row(0, "Compute $3 \\cdot 7 - 5$.", "16"), row(1, "Find $x$ if $2x + 3 = 11$.", "4")]


def aime_rows() -> list[dict]:
    """AIME 2024 (HuggingFaceH4/aime_2024): id, problem, solution, answer, url, year."""
    return [{"id": 60, "problem": "Find the number of integers $n$ with $1 \\le n \\le 10$ and $n^2 < 30$.",
             "solution": "$n \\le 5$, so $\\boxed{5}$.", "answer": "5", "url": "https://example.org/1", "year": "2024"},
            {"id": 61, "problem": "Compute $2^{10} - 1000$.", "solution": "$1024 - 1000 = \\boxed{24}$.",
             "answer": "24", "url": "https://example.org/2", "year": "2024"}]


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_hub_snapshot(folder: Path, rows: list[dict], config: str = "main") -> Path:
    """A local copy of a hub dataset repo (what `git clone` / `snapshot_download` gives for openai/gsm8k): the
    README's `configs` metadata maps configuration `main` to `main/{train,test}-*.parquet`."""
    (folder / config).mkdir(parents=True)
    for split in ("train", "test"):
        pd.DataFrame(rows).to_parquet(folder / config / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: train\n    path: {config}/train-*\n"
        f"  - split: test\n    path: {config}/test-*\n---\n")
    return folder


def words_of(texts: Iterable[str]) -> list[str]:
    """Every whitespace-separated word of `texts`: the tiny word tokenizer then reads the data without <unk>."""
    seen: dict[str, None] = {}
    for t in texts:
        for w in str(t).split():
            seen.setdefault(w, None)
    return list(seen)


def data_words(*sources: str | Path, **options) -> list[str]:
    """The words of the prompts and CoT targets the project's loader makes of `sources`."""
    from latentrl.data import load_examples
    from latentrl.data.schema import to_record

    records = [to_record(ex) for s in sources for ex in load_examples(s, split="train", **options)]
    return words_of(t for r in records for t in (r["prompt"], r["completion"]))


# --------------------------------------------------------------------------------------------------- tiny models


def save_tiny_model(path: Path, arch: str, words: list[str], *, chat: bool = False, latent_tokens: bool = False,
                    extra_words: Iterable[str] = (), prepare: Callable[[LatentModel], None] | None = None) -> Path:
    """A random-weight `arch` model saved in the layout the preset loads: a plain HF folder (a hub model) or,
    with `latent_tokens`, a LatentModel checkpoint with the Coconut tokens (`LatentModel.save_pretrained`)."""
    lm = tiny_latent_model(arch, [*words, *extra_words, *(["system", "user", "assistant"] if chat else [])],
                           add_latent_tokens=False, hidden=32, max_positions=1024)
    if chat:
        lm.tokenizer.add_special_tokens({"additional_special_tokens": CHAT_SPECIAL})
        lm.tokenizer.chat_template = CHATML
        lm.model.resize_token_embeddings(len(lm.tokenizer), mean_resizing=False)
    if latent_tokens:
        lm.add_latent_tokens(init_from="<<")
    if prepare is not None:
        prepare(lm)
    lm.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """How one preset is made runnable here: its entry point, its stand-ins and its size overrides."""

    command: str  # latentrl sub-command
    build: Callable[[Path], dict[str, str]]  # tmp folder -> {key: local stand-in} (model, dataset, eval_dataset)
    sizes: dict[str, object]
    expect: dict[str, float] = field(default_factory=dict)  # step-1 metrics the preset's settings fix
    check: Callable[[Path, Path, list[dict]], None] = lambda run, ckpt, metrics: None  # method-specific checks
    resume: bool = True


def _gsm8k_hub(tmp: Path, arch: str, chat: bool) -> dict[str, str]:
    data = write_hub_snapshot(tmp / "openai-gsm8k", gsm8k_rows())
    words = data_words(FIXTURES / "gsm8k_small.jsonl")
    return {"model_name_or_path": str(save_tiny_model(tmp / "model", arch, words, chat=chat)), "dataset": str(data)}


def build_hrpo(tmp: Path) -> dict[str, str]:
    return _gsm8k_hub(tmp, "qwen2", chat=True)


def build_dlr_prefix(tmp: Path) -> dict[str, str]:
    return _gsm8k_hub(tmp, "qwen2", chat=False)


def build_dlr_gpt2(tmp: Path) -> dict[str, str]:
    words = data_words(FIXTURES / "icot_small.txt")
    model = save_tiny_model(tmp / "coconut-gpt2-gsm8k", "gpt2", words, latent_tokens=True)
    return {"model_name_or_path": str(model), "dataset": str(FIXTURES / "icot_small.txt"),
            "eval_dataset": str(FIXTURES / "icot_small.txt")}


def build_coconut_gpt2(tmp: Path) -> dict[str, str]:
    words = data_words(FIXTURES / "icot_small.txt")
    model = save_tiny_model(tmp / "gsm8k-cot-gpt2", "gpt2", words, latent_tokens=True)
    return {"model_name_or_path": str(model), "dataset": str(FIXTURES / "icot_small.txt"),
            "eval_dataset": str(FIXTURES / "icot_small.txt")}


def _openr1(tmp: Path, name: str, value_head: bool, columns: str) -> dict[str, str]:
    """OpenR1-Math rows as the preset's comment says (`question`/`answer` JSON lines) or in OpenR1's own columns."""
    rows = openr1_rows()
    if columns == "question/answer":
        rows = [{"question": r["problem"], "answer": r["answer"]} for r in rows]
    data = write_jsonl(tmp / "openr1_math.jsonl", rows)

    def prepare(lm: LatentModel) -> None:
        if value_head:  # the preset's recipe: pre-train the head on SFT-model rollouts, save it with the model
            from latentrl.data import load_examples
            from latentrl.methods.latent_rl import pretrain_value_head

            pretrain_value_head(lm, load_examples(data)[:2], num_latent_steps=6, max_new_positions=8, epochs=1)

    words = data_words(data)
    return {"model_name_or_path": str(save_tiny_model(tmp / name, "qwen2", words, latent_tokens=True,
                                                      prepare=prepare)),
            "dataset": str(data)}


def build_coconut_grpo(tmp: Path) -> dict[str, str]:
    return _openr1(tmp, "latr-qwen2.5-1.5b-sft", value_head=False, columns="openr1")


def build_latent_rl(tmp: Path) -> dict[str, str]:
    return _openr1(tmp, "latr-qwen2.5-1.5b-sft-valuehead", value_head=True, columns="question/answer")


def build_latent_grpo(tmp: Path) -> dict[str, str]:
    rows = gsm8k_aug_jsonl_rows()
    train = write_jsonl(tmp / "GSM8k-Aug-train.jsonl", rows)
    test = write_jsonl(tmp / "GSM8k-Aug-test.jsonl", rows[:2])
    words = data_words(train) + ["</think>"]
    model = save_tiny_model(tmp / "LLaMA3.2-1B-Instruct-Latent-SFT-Top10", "llama", words, chat=True)
    return {"model_name_or_path": str(model), "dataset": str(train), "eval_dataset": str(test)}


def build_lepo(tmp: Path) -> dict[str, str]:
    train = write_jsonl(tmp / "dapo_math_17k_en.jsonl", dapo_en_rows())
    test = write_jsonl(tmp / "aime2024.jsonl", aime_rows())
    words = data_words(train, test)
    return {"model_name_or_path": str(save_tiny_model(tmp / "Qwen2.5-3B", "qwen2", words)), "dataset": str(train),
            "eval_dataset": str(test)}


# ------------------------------------------------------------------ method-specific checks on the checkpoint


def side_state(ckpt: Path) -> dict[str, torch.Tensor]:
    assert (ckpt / SIDE_MODULES_FILE).is_file(), f"no side modules saved in {ckpt}"
    return load_file(str(ckpt / SIDE_MODULES_FILE))


def check_hrpo(run: Path, ckpt: Path, metrics: list[dict]) -> None:
    # LoRA (r 32, alpha 64, attention + MLP projections): the checkpoint holds the adapter, not the full model
    adapter = json.loads((ckpt / ADAPTER_CONFIG_FILE).read_text())
    assert adapter["r"] == 32 and adapter["lora_alpha"] == 64
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert not (ckpt / "config.json").exists()
    lora_b = [v for k, v in load_file(str(ckpt / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b)  # B starts at 0: the KL term trained it
    assert any(k.startswith("hrpo_gate.") and "Lambda" in k for k in side_state(ckpt))
    assert metrics[0]["grad_norm"] > 0 and "kl" in metrics[0] and "embeds_ratio" in metrics[0]
    lm = LatentModel.from_pretrained(ckpt)
    assert lm.is_peft and lm.tokenizer.chat_template == CHATML


def check_dlr_prefix(run: Path, ckpt: Path, metrics: list[dict]) -> None:
    state = side_state(ckpt)
    assert any(k.startswith("dlr_assistant.") for k in state), sorted(state)


def check_dlr(run: Path, ckpt: Path, metrics: list[dict]) -> None:
    # the assistant was distilled at step 1 (and marked so, with its thoughts' scale) and saved with the model
    state = side_state(ckpt)
    assert float(state["dlr_chain_assistant.distilled"]) == 1.0 and float(state["dlr_chain_assistant.scale"]) > 0
    assert "dlr/distill_mse_last" in metrics[0] and "dlr/nll" in metrics[0] or "dlr/kept_frac" in metrics[0]


def check_latent_model(run: Path, ckpt: Path, metrics: list[dict]) -> None:
    meta = json.loads((ckpt / LATENT_META_FILE).read_text())
    assert meta["end"] == "<|end-latent|>"
    assert LatentModel.from_pretrained(ckpt).latent_ids is not None


def check_latent_rl(run: Path, ckpt: Path, metrics: list[dict]) -> None:
    check_latent_model(run, ckpt, metrics)
    # the head saved with the starting model was loaded (no pre-training at step 1) and trained by the step
    assert not any(k.startswith("value/pretrain") for k in metrics[0]) and "value/bce" in metrics[0]
    start = load_file(str(Path(json.loads((run / RUN_CONFIG_FILE).read_text())["model_name_or_path"])
                          / SIDE_MODULES_FILE))
    after = side_state(ckpt)
    assert start.keys() == after.keys() and any(k.startswith("value_head.") for k in after)
    assert any(not torch.equal(start[k], after[k]) for k in start)


def check_full_model(run: Path, ckpt: Path, metrics: list[dict]) -> None:
    assert (ckpt / "config.json").is_file() and not (ckpt / ADAPTER_CONFIG_FILE).exists()


GRPO_SIZES = {"max_steps": 1, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2,
              "num_generations": 2}
CASES: dict[str, Case] = {
    "coconut_gpt2_gsm8k.yaml": Case(
        "coconut-sft", build_coconut_gpt2,
        {"max_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "eval_batch_size": 4,
         "max_new_positions": 12, "save_steps": 1},
        # start_stage 1 = epoch 3 (3 epochs per stage); c_thought 2 thoughts per replaced step
        expect={"stage": 1, "epoch": 3, "eval/mean_latent_positions": 2.0},
        check=check_latent_model),
    "coconut_grpo_qwen2.5-1.5b.yaml": Case(
        "train", build_coconut_grpo, {**GRPO_SIZES, "max_completion_length": 10},
        expect={"completions/mean_latent": 6.0}, check=check_latent_model),
    "dlr_gpt2_gsm8k.yaml": Case(
        "train", build_dlr_gpt2, {**GRPO_SIZES, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 4,
                                  "max_completion_length": 12, "dlr.distill_steps": 2, "dlr.distill_examples": 4},
        expect={"completions/mean_latent": 6.0}, check=check_dlr),
    "dlr_prefix_qwen2.5-1.5b.yaml": Case(
        "train", build_dlr_prefix, {**GRPO_SIZES, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 2,
                                    "max_completion_length": 20},
        expect={"completions/mean_latent": 16.0}, check=check_dlr_prefix),
    "hrpo_qwen2.5-1.5b_gsm8k.yaml": Case(
        "train", build_hrpo, {**GRPO_SIZES, "num_generations": 4, "per_device_train_batch_size": 2,
                              "max_completion_length": 12}, check=check_hrpo),
    "latent_grpo_llama3.2-1b_gsm8k.yaml": Case(
        "train", build_latent_grpo, {**GRPO_SIZES, "max_completion_length": 12}, check=check_full_model),
    "latent_rl_qwen2.5-1.5b.yaml": Case(
        "train", build_latent_rl, {**GRPO_SIZES, "max_completion_length": 10},
        expect={"completions/mean_latent": 6.0}, check=check_latent_rl),
    "lepo_qwen2.5-3b.yaml": Case(
        "train", build_lepo, {**GRPO_SIZES, "max_completion_length": 68},
        expect={"completions/mean_latent": 64.0}, check=check_full_model),
}


def test_every_preset_has_a_case():
    assert sorted(CASES) == PRESETS


# --------------------------------------------------------------------------------------------------- the run


def flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def as_override(key: str, value: object) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def run_cli(case: Case, preset: Path, values: dict[str, object], resume: bool = False) -> None:
    argv = [case.command, "--config", str(preset), *(as_override(k, v) for k, v in values.items())]
    rc = main(argv + (["--resume"] if resume else []))
    assert rc == 0, f"latentrl {' '.join(argv)} failed (rc {rc})"


def check_metrics(run: Path, steps: list[int]) -> list[dict]:
    """The logged rows of `steps` (a step may log a training and an evaluation row): all numbers finite."""
    rows = read_metrics(run / "metrics.jsonl")
    assert sorted({r["step"] for r in rows}) == steps
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, f"non-finite metrics at step {r['step']}: {bad}"
    for step in steps:
        assert any("loss" in r for r in rows if r["step"] == step), f"no training loss logged at step {step}"
    return rows


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_unchanged(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    case = CASES[name]
    preset = ROOT / "configs" / name
    cls = CoconutConfig if case.command == "coconut-sft" else GRPOConfig
    run = tmp_path / "run"
    values = {**case.build(tmp_path), **case.sizes, "output_dir": str(run)}
    run_cli(case, preset, values)

    # the run used the preset's values except the overridden keys
    written = flat(json.loads((run / RUN_CONFIG_FILE).read_text()))
    original = flat(config_to_dict(load_config(cls, preset)))
    assert written.keys() == original.keys()
    changed = {k for k in original if written[k] != original[k]}
    assert changed <= set(values), f"{name}: keys changed beyond the overrides: {changed - set(values)}"
    assert written == flat(config_to_dict(load_config(cls, preset, [as_override(k, v) for k, v in values.items()])))

    rows = check_metrics(run, [1])
    merged = {k: v for r in rows for k, v in r.items()}
    for key, value in case.expect.items():
        assert merged.get(key) == value, f"{name}: {key} = {merged.get(key)!r}, the preset implies {value!r}"
    if case.command == "coconut-sft":
        assert "eval/pass_at_1" in merged  # eval_strategy: epoch, and the final evaluation
        ckpt = run  # `latentrl coconut-sft` saves the trained model in output_dir
    else:
        assert all(math.isfinite(merged[k]) for k in ("loss", "reward", "grad_norm"))
        assert ("eval/pass_at_1" in merged) == bool(original["eval_dataset"])
        ckpt = run / "checkpoint-1"
        assert (ckpt / COMPLETE_MARKER).is_file(), sorted(p.name for p in run.iterdir())
    assert (run / "tb").is_dir() == ("tensorboard" in original["report_to"])

    if case.resume:  # `latentrl train --resume`: continues from checkpoint-1 and writes checkpoint-2
        run_cli(case, preset, {**values, "max_steps": 2}, resume=True)
        check_metrics(run, [1, 2])
        ckpt = run / "checkpoint-2"  # with max_steps 1 a warmup_ratio > 0 makes step 1 a zero-lr step (HF rule)
        assert (ckpt / COMPLETE_MARKER).is_file()
        assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    case.check(run, ckpt, rows)


# --------------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", [n for n in PRESETS if CASES[n].command == "train"])
def test_warmup_steps_round_up_like_hf(name, tmp_path):
    """`warmup_ratio` gives HF's warmup length (rounded up): the presets write their authors' warmup steps as a
    ratio of max_steps, e.g. coconut_grpo's 0.0053 of 1875 steps = the paper's 10 steps (truncating gave 9)."""
    from transformers import TrainingArguments

    cfg = load_config(GRPOConfig, ROOT / "configs" / name)
    hf = TrainingArguments(output_dir=str(tmp_path), warmup_steps=cfg.warmup_ratio).get_warmup_steps(cfg.max_steps)
    assert num_warmup_steps(cfg.warmup_ratio, cfg.max_steps) == hf


def test_trainer_schedule_warms_up_for_the_presets_stated_steps(tmp_path):
    """configs/coconut_grpo_qwen2.5-1.5b.yaml: '10 warmup steps of 1875' — the trainer's schedule rises for 10."""
    from latentrl.rl.trainer import GRPOTrainer

    cfg = load_config(GRPOConfig, ROOT / "configs" / "coconut_grpo_qwen2.5-1.5b.yaml",
                      ["model_name_or_path=tiny", f"output_dir={tmp_path}"])
    trainer = GRPOTrainer(cfg, tiny_latent_model("qwen2", ["Tom"]), [{"prompt": "1 2 ||", "answer": "3"}])
    warm = trainer.scheduler.lr_lambdas[0]
    assert [warm(s) for s in (0, 9)] == pytest.approx([0.0, 0.9]) and warm(10) == pytest.approx(1.0)
