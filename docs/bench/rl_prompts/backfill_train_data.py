"""One-off (2026-12-05): record in each shipped checkpoint's metadata the synthetic draws it was trained on
(`train_data`, read by `latentrl.data.provenance`), from the commands its metadata already records:

- CoT / no-CoT models: `latentrl pretrain --config configs/pretrain_<task>.yaml` (num_train_examples 120,000 icot /
  80,000 chain_sum, num_eval_examples 200, seed 0, the config's difficulty);
- latent inits: their base CoT's pretraining draw (the 4-layer bases used the same icot config with another
  `chain`, which does not change the questions) plus the latent SFT's own draw: scripts/train_superposition_init.py
  (num_train 8,000, seed 0, n_eval 500), scripts/train_latent_init.py (num_train_examples 20,000 for chain_sum's
  recipe; 1,000,000 in every phase of the icot Coconut lineage, docs/bench/icot_latent_init/README.md).

    PYTHONPATH=src python docs/bench/rl_prompts/backfill_train_data.py
"""
import json

from latentrl.assets import model_path

ICOT, CS = {"digits": 4}, {"length": 8, "modulus": 10, "ops": "+"}
ICOT_PRE = {"dataset": "icot_mult", "n_train": 120000, "n_eval": 200, "seed": 0, "knobs": ICOT}
CS_PRE = {"dataset": "chain_sum", "n_train": 80000, "n_eval": 200, "seed": 0, "knobs": CS}
CTF = {**ICOT, "chain": "columns_tens_first"}
DRAWS = {
    "icot_mult_4x4-cot": [ICOT_PRE], "icot_mult_4x4-cot-converged": [ICOT_PRE], "icot_mult_4x4-nocot": [ICOT_PRE],
    "chain_sum-cot": [CS_PRE], "chain_sum-cot-converged": [CS_PRE], "chain_sum-nocot": [CS_PRE],
    "icot_mult_4x4-superposition": [{**ICOT_PRE, "knobs": CTF},
                                    {"dataset": "icot_mult", "n_train": 8000, "n_eval": 500, "seed": 0, "knobs": CTF}],
    "icot_mult_4x4-coconut": [{**ICOT_PRE, "knobs": {**ICOT, "chain": "partials"}},
                              {"dataset": "icot_mult", "n_train": 1_000_000, "n_eval": 500, "seed": 0, "knobs": CTF}],
    "chain_sum-coconut": [CS_PRE, {"dataset": "chain_sum", "n_train": 20000, "n_eval": 500, "seed": 0, "knobs": CS}],
    "chain_sum-superposition": [CS_PRE, {"dataset": "chain_sum", "n_train": 8000, "n_eval": 500, "seed": 0, "knobs": CS}],
}
for name, draws in DRAWS.items():
    folder = model_path(name)
    meta = next(folder / f for f in ("latent_init.json", "results.json") if (folder / f).is_file())
    text = meta.read_text()
    indent = len(text.split("\n", 2)[1]) - len(text.split("\n", 2)[1].lstrip())  # keep the file's own layout
    d = json.loads(text)
    d["train_data"] = draws
    meta.write_text(json.dumps(d, indent=indent) + ("\n" if text.endswith("\n") else ""))
    print(meta, len(draws))
