"""Scores the quick superposition-SFT init of chain_sum exactly as `latentrl bench` scores its rows (same 500
problems, operator, schedule, k=4, seed 0): python docs/bench/chain_sum/latent_inits/eval_superposition_init.py INIT_DIR"""
import json
import sys

from latentrl.bench import suite_tasks
from latentrl.cli import build_model_for, small_model_threads
from latentrl.config import GRPOConfig, load_config
from latentrl.eval import evaluate
from latentrl.methods import get_method

small_model_threads()
init = sys.argv[1] if len(sys.argv) > 1 else "bench_out/inits/chain_sum/superposition_sft-quick"  # built by latentrl bench --quick --tasks chain_sum
cfg = load_config(GRPOConfig, "configs/cpu/latent_grpo.yaml", [f"model_name_or_path={init}", "dataset=chain_sum",
      "max_completion_length=60", "report_to=[none]", "output_dir=runs/eval_init", "beta=0"])
data = suite_tasks()["chain_sum"].eval_examples(500)
t = get_method(cfg.method).trainer_class(cfg, build_model_for(cfg), data, eval_dataset=data)
res = evaluate(t.model, data, operator=t.operator, schedule=t.schedule, max_new_positions=60, k=4, seed=0,
               prompt_text=t.prompt_text)
print(json.dumps({k: v for k, v in res.to_dict().items() if k != "samples"}))
