"""glibc's malloc thresholds and the rollout benchmark at V = 151,936 (issue 18): the same modes with malloc as it
is, with the mmap threshold fixed at 32 MiB, with the trim threshold at 1 GiB, and with both (what
`latentrl.cpu_allocator.tune_glibc_malloc` sets). Each setting runs `benchmarks/rollout_speed.py` in a fresh process
(the thresholds are process-wide), the library's own tuning switched off there (LATENTRL_MALLOC_TUNING=0).

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/malloc_thresholds_ab.py
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHILD = """
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
if "mmap" in sys.argv[1]:
    assert libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
if "trim" in sys.argv[1]:
    assert libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
sys.path.insert(0, sys.argv[2])
import rollout_speed
rollout_speed.main(["--vocab-size", "151936", "--new", "16", "--repeats", "3", "--logit-scale", "15",
                    "--modes", "generate,discrete,gumbel_softmax,gumbel_topk,hrpo_gate"])
"""
env = {**os.environ, "LATENTRL_MALLOC_TUNING": "0"}
for setting in ("as it is", "mmap", "trim", "mmap+trim"):
    out = subprocess.run([sys.executable, "-c", CHILD, setting, str(ROOT / "benchmarks")], capture_output=True,
                         text=True, env=env, check=True).stdout
    print(f"== {setting}")
    print("\n".join(line[:104] for line in out.splitlines()
                    if line.split(" ")[0] in ("mode", "generate", "discrete", "gumbel_softmax", "gumbel_topk",
                                              "hrpo_gate")))
