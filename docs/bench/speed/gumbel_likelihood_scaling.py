"""One shape of `benchmarks/scaling.py` for Latent-GRPO's operator with a chosen log-prob and noise scale.

    PYTHONPATH=src python docs/bench/speed/gumbel_likelihood_scaling.py likelihood 0.1 32

scaling.py's worker (rollout of `new` latent positions, then the update: replay with gradients and backward) at
V = 151,936, batch as given, 64 positions, with `gumbel_topk` built as `logprob=<arg 1>`, `noise_scale=<arg 2>`.
Run it from a worktree of another commit (PYTHONPATH=<worktree>/src) for a before / after comparison.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import latentrl.thoughts as thoughts  # noqa: E402

logprob, scale, batch = sys.argv[1], float(sys.argv[2]), sys.argv[3]
build = thoughts.build_thought_operator


def with_mode(name, **kw):
    if name == "gumbel_topk":
        kw.update(logprob=logprob, noise_scale=scale)
    return build(name, **kw)


thoughts.build_thought_operator = with_mode
import scaling  # noqa: E402

args = scaling.parse_args(["--vocab-size", "151936", "--repeats", "1", "--worker", "gumbel_topk", batch, "64"])
row = scaling.worker(args)
print(logprob, scale, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}))
