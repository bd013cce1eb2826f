"""Which part of Latent-GRPO's loss moves an icot init: `rl_from_init.py` (method latent_grpo) with the policy
gradient restricted to one kind of position (an experiment only: the method's `policy_kind_masks` is replaced in this
process; the loss normaliser still counts every completion position, as in the full method).

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/rl_prompts/latent_grpo_ablation.py answer|latent OUT_DIR \
        task=icot_mult_4x4 [key=value ...]

answer: only the token positions after the latent span (the answer) get the clipped surrogate;
latent: only the latent positions (the authors' Gumbel surrogate) do.
"""
import runpy
import sys
from pathlib import Path

from latentrl.methods.latent_grpo.method import LatentGRPO

which = sys.argv.pop(1)
if which not in ("answer", "latent"):
    raise SystemExit("first argument: answer or latent")


def restricted(self, ctx, batch, policy_mask):
    lat = batch.rollout.latent_mask.to(policy_mask.device)
    return {ctx.args.policy_loss: policy_mask & (~lat if which == "answer" else lat)}


LatentGRPO.policy_kind_masks = restricted
runpy.run_path(str(Path(__file__).parents[1] / "chain_sum/superposition_init/rl_from_init.py"), run_name="__main__")
