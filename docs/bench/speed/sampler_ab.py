"""`sample_tokens` and `logsumexp_rows` of an earlier commit vs the working tree, in one process, alternating.

    OMP_NUM_THREADS=1 python docs/bench/speed/sampler_ab.py REV

32 rows of 151,936 logits, flat (randn) and peaked (randn x 15, as `rollout_speed.py --logit-scale 15`); median ms of
8 rounds of 3 calls each. REV's `src/latentrl/sampling.py` is read with `git show`.
"""

import importlib.util
import subprocess
import sys
import time

import torch

sys.path.insert(0, "src")
from latentrl import sampling as new  # noqa: E402


def load(rev: str, name: str = "sampling"):
    """REV's `src/latentrl/<name>.py` as a module (its `latentrl` imports resolve to the working tree)."""
    text = subprocess.run(["git", "show", f"{rev}:src/latentrl/{name}.py"], capture_output=True, text=True,
                          check=True).stdout
    path = f"/tmp/{name}_{rev}.py"
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location(f"{name}_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(rev: str) -> None:
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    old = load(rev)
    for scale in (1.0, 15.0):
        logits = torch.randn(32, 151_936, generator=torch.Generator().manual_seed(0)) * scale
        times: dict[str, list[float]] = {}
        for r in range(8):
            for name, mod in ((rev, old), ("tree", new)):
                for fn in ("sample_tokens", "logsumexp_rows"):
                    g = torch.Generator().manual_seed(r)
                    t0 = time.perf_counter()
                    for _ in range(3):
                        if fn == "sample_tokens":
                            mod.sample_tokens(logits, 1.0, None, None, g)
                        else:
                            mod.logsumexp_rows(logits)
                    times.setdefault(f"{fn} {name}", []).append((time.perf_counter() - t0) / 3 * 1e3)
        print(f"scale {scale:>4}: " + "  ".join(f"{k} {sorted(v)[len(v) // 2]:.1f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main(sys.argv[1])
