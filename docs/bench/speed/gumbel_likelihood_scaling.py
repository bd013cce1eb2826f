"""One shape of `benchmarks/scaling.py` for Latent-GRPO's operator with a chosen log-prob and noise scale.

    PYTHONPATH=src python docs/bench/speed/gumbel_likelihood_scaling.py likelihood 0.1 32 [SORT_LIMIT]

scaling.py's worker (rollout of `new` latent positions, then the update: replay with gradients and backward) at
V = 151,936, batch as given, 64 positions, with `gumbel_topk` built as `logprob=<arg 1>`, `noise_scale=<arg 2>`.
Run it from a worktree of another commit (PYTHONPATH=<worktree>/src) for a before / after comparison. SORT_LIMIT
(optional) sets `GumbelTopKThought.competitor_sort_limit`: 0 sends every row of the exact likelihood down the
whole-row path (`_dense_competitors`) instead of the sorted prefix.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import latentrl.thoughts as thoughts  # noqa: E402

logprob, scale, batch = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:
    from latentrl.thoughts.gumbel_topk import GumbelTopKThought

    GumbelTopKThought.competitor_sort_limit = int(sys.argv[4])
build = thoughts.build_thought_operator


def with_mode(name, **kw):
    if name == "gumbel_topk":
        kw.update(logprob=logprob, noise_scale=scale)
    return build(name, **kw)


thoughts.build_thought_operator = with_mode
import scaling  # noqa: E402

args = scaling.parse_args(["--vocab-size", "151936", "--repeats", "1", "--worker", "gumbel_topk", batch, "64"])
row = scaling.worker(args)
print(logprob, scale, *sys.argv[4:5], json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}))
