"""`rl_from_init.py` with the authors' surrogate evaluated on the implied *unit* Gumbel draw at noise scale s (a
measurement, not a library option): mean_k [log φ(ε_k / s) − log s] instead of the library's mean_k log φ(ε_k).

At `latent.noise_scale=0.1` the library's surrogate lowers the rollouts' own accuracy on chain_sum; this checks
whether that comes from evaluating the unit density at the scaled noise or from the surrogate's form (the chosen
entries' densities alone, no competitors), by rescaling it the way a density of the scaled draw would be:

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/rl_prompts/scaled_surrogate.py OUT task=chain_sum \\
        latent.noise_scale=0.1 learning_rate=5e-6 max_steps=400
"""
import math
import runpy
import sys

import latentrl.thoughts.gumbel_topk as gt

_library_score = gt.GumbelTopKThought._score


def _scaled_score(self, x, lse, payload):
    if self.logprob == "authors" and self.noise_scale not in (0.0, 1.0):
        chosen_lp = x.gather(-1, payload["ids"]) - lse
        s = self.noise_scale
        return (gt.gumbel_log_density((payload["scores"].float() - chosen_lp) / s) - math.log(s)).mean(-1)
    return _library_score(self, x, lse, payload)


if __name__ == "__main__":
    gt.GumbelTopKThought._score = _scaled_score  # rollout and replay alike: the run replays to its rollout
    sys.argv = ["rl_from_init.py", *sys.argv[1:]]
    runpy.run_path("docs/bench/chain_sum/superposition_init/rl_from_init.py", run_name="__main__")
