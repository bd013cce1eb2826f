"""Data: one `Example` schema, synthetic tasks, and loaders for real files and hub datasets."""

from latentrl.data.loaders import (
    cut_steps,
    load_examples,
    load_icot,
    load_jsonl,
    load_prontoqa,
    load_prosqa,
    load_rows,
    load_table,
    parse_icot_line,
    split_icot_steps,
)
from latentrl.data.schema import (
    DataFormatError,
    Example,
    format_cot,
    format_icot_line,
    format_no_cot,
    format_prompt,
    to_record,
)
from latentrl.data.tasks import (
    TASKS,
    TaskSpec,
    icot_mult_example,
    icot_mult_factors,
    make_examples,
    task_vocabulary,
    train_eval_split,
)

__all__ = [
    "cut_steps",
    "TASKS",
    "DataFormatError",
    "Example",
    "TaskSpec",
    "format_cot",
    "format_icot_line",
    "format_no_cot",
    "format_prompt",
    "icot_mult_example",
    "icot_mult_factors",
    "load_examples",
    "load_icot",
    "load_jsonl",
    "load_prontoqa",
    "load_prosqa",
    "load_rows",
    "load_table",
    "make_examples",
    "parse_icot_line",
    "split_icot_steps",
    "task_vocabulary",
    "to_record",
    "train_eval_split",
]
