"""The shipped latent inits (scripts/train_latent_init.py) re-checked on a small held-out slice: accuracy, chain
length and that the answer depends on the thoughts (the full-size figures are in docs/bench/)."""

from __future__ import annotations

import json

import pytest

from latentrl.assets import available_models, model_path
from latentrl.bench import suite_tasks
from latentrl.model import LatentModel
from latentrl.sft.coconut import coconut_operator, coconut_prompt_text, coconut_schedule
from latentrl.thought_dependence import thought_dependence

N = 40  # problems: seconds on one CPU core


@pytest.mark.parametrize("name, task, min_pass, max_positions, min_drop", [
    ("chain_sum-coconut", "chain_sum", 0.85, 49 / 5, 0.5),
])
def test_shipped_latent_init_reasons_through_its_thoughts(name, task, min_pass, max_positions, min_drop):
    if name not in available_models():
        pytest.skip(f"{name} not shipped")
    path = model_path(name)
    info = json.loads((path / "latent_init.json").read_text())
    model = LatentModel.from_pretrained(path)
    start = model.latent_tokens.start
    evals = suite_tasks()[task].eval_examples(N)
    dep = thought_dependence(model, evals, operator=coconut_operator(model),
                             schedule=coconut_schedule(model, info["num_thoughts"]),
                             max_new_positions=suite_tasks()[task].max_completion_length, batch_size=N,
                             prompt_text=lambda row: coconut_prompt_text(row, start))
    assert dep.pass_own >= min_pass
    assert info["num_thoughts"] + 1 <= max_positions  # thoughts + <|end-latent|> before `####`
    assert dep.drop_swap >= min_drop and dep.mean_latent_positions == info["num_thoughts"]
