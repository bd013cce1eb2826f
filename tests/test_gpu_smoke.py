"""benchmarks/gpu_smoke.py, the script meant for the first GPU run, runs clean on the CPU: every registered method
does one rollout that replays to its own log-probs and one finite optimizer step (so does Latent-GRPO with its exact
likelihood, a `VARIANTS` entry); then a few steps of each SFT
trainer (CoT, Coconut, superposition) and the thought-swap check."""

import json
import os
import subprocess
import sys
from pathlib import Path

from latentrl.methods import METHODS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_smoke import VARIANTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_smoke_script_runs_every_method_on_cpu():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "LATENTRL_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and out["all_ok"], proc.stdout[-4000:] + proc.stderr[-4000:]
    stages = ["sft_cot", "sft_coconut", "sft_superposition", "thought_dependence"]
    methods = sorted(METHODS) + list(VARIANTS)
    assert [r["method"] for r in out["results"]] == methods + stages
    for r in out["results"][len(methods):]:  # SFT trainers and the swap test: a few finite steps, weights in place
        assert r["devices"] == ["cpu"] and r["losses"] and 0.0 <= r["pass_at_1"] <= 1.0, r
    for r in out["results"][: len(methods)]:
        assert r["device"] == "cpu" and r["params_off_device"] == []
        # float32 on the CPU: replay equals the rollout up to rounding. Latent-GRPO's exact likelihood is a log of
        # sums over a few hundred competitors, computed from the logits in the rollout and from the log-softmax in
        # the replay: 1.05e-5 on one CPU (2026-12-07), a few ulp of its magnitude
        tol = 5e-5 if r["method"].endswith(":likelihood") else 1e-5
        assert r["replay_max_abs_diff"] <= tol, r
        assert r["positions"] > 0
