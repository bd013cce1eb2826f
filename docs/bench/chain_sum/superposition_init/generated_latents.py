"""Where a superposition init's own latents go wrong: each latent it writes (greedy, as the bench scores it) against
the chunk of the gold chain it was trained to write there, on the first N problems of the real iCoT 4x4 file.

    PYTHONPATH=src python docs/bench/chain_sum/superposition_init/generated_latents.py MODEL TOKENS_PER_LATENT [N]
        [CHUNK_SIZES]

CHUNK_SIZES: the run's `chunk_sizes`, comma-separated (e.g. 3,3,3,3,3,3,3,3,3,3,4,4,4,4).

A latent is "right" when its heaviest tokens, in weight order, are the chunk's tokens in the order a positional
superposition encodes (`chunk_superpositions(..., weighting="positional")`). Prints, per latent index, the fraction
right and the fraction of problems whose first wrong latent is that one; `per_latent.py` is the teacher-forced
counterpart (every earlier latent given).
"""

import sys
from pathlib import Path

import torch

from latentrl.bench import suite_tasks
from latentrl.config import GRPOConfig, load_config
from latentrl.data.schema import as_rows
from latentrl.data.tasks import icot_mult_example, icot_mult_factors
from latentrl.methods import get_method
from latentrl.model import LatentModel
from latentrl.rollout import SamplingParams, generate_rollout, left_pad
from latentrl.sft.superposition import chunk_superpositions

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[4]
model_dir, tpl = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 500
sizes = [int(c) for c in sys.argv[4].split(",")] if len(sys.argv) > 4 else []
task = suite_tasks()["icot_mult_4x4"]
examples = task.eval_examples(n)
run = load_config(GRPOConfig, REPO / "configs/cpu/latent_grpo.yaml",
                  [f"model_name_or_path={model_dir}", f"dataset={task.dataset}", "report_to=[none]", "beta=0",
                   f"max_completion_length={task.max_completion_length}", "output_dir=/tmp/unused"])
lm = LatentModel.from_pretrained(model_dir).eval()
parts = get_method("latent_grpo").build(lm, run)
parts.operator.set_eval_mode(True)
tok = lm.tokenizer
gold = []  # (m, c) ordered ids of each chunk of the chain the model trained on (columns_tens_first)
for ex in examples:
    steps = icot_mult_example(*icot_mult_factors(ex.question), chain="columns_tens_first").steps
    ids, w = chunk_superpositions(tok(" " + " ".join(steps), add_special_tokens=False)["input_ids"], tpl, 10,
                                  tok.pad_token_id, weighting="positional", chunk_sizes=sizes)
    gold.append([row[: int((wt > 0).sum())].tolist() for row, wt in zip(ids, w)])
right = torch.zeros(len(examples), max(len(g) for g in gold), dtype=torch.bool)
with torch.no_grad():
    for s in range(0, len(examples), 100):
        rows = as_rows(examples[s: s + 100])  # the prompts as training and the bench format them
        ids, mask = left_pad([tok(parts.prompt_text(r), add_special_tokens=False)["input_ids"] for r in rows],
                             tok.pad_token_id)
        ro = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=task.max_completion_length,
                                                            temperature=0.0), parts.operator, parts.schedule)
        for b in range(ids.shape[0]):
            pos = ro.latent_mask[b].nonzero().flatten().tolist()
            written = ro.payload["ids"][b]  # (C, K), heaviest first
            for j, g in enumerate(gold[s + b]):
                right[s + b, j] = j < len(pos) and written[pos[j], : len(g)].tolist() == g
first_wrong = [int((~r).float().argmax()) if not bool(r.all()) else None for r in right]
print(f"{model_dir} (tokens_per_latent={tpl}, chunk_sizes={sizes or 'none'}, n={len(examples)}; real iCoT 4x4 valid file)")
print("latent  right   first wrong here")
for j in range(right.shape[1]):
    here = sum(f == j for f in first_wrong) / len(examples)
    print(f"{j:6d}  {right[:, j].float().mean():.3f}  {here:.3f}")
print(f"every latent right: {sum(f is None for f in first_wrong) / len(examples):.3f}")
