#!/usr/bin/env bash
# The GPU runbook of benchmarks/README.md ("GPU figures") as one script: device facts, the one-step smoke of every
# method (fp32, then bf16), the CUDA tests, decoding throughput and one GRPO step against TRL at Qwen2.5-0.5B's shape.
# Each step has its own time limit and log (LOGDIR/<step>.log), so one failing step does not hide the others.
#
#   LOGDIR=gpu_logs bash benchmarks/gpu_figures.sh          # needs one CUDA GPU and `pip install -e .[bench]`
#   STEPS="env smoke_fp32" bash benchmarks/gpu_figures.sh   # a subset, in this order
set -u
cd "$(dirname "$0")/.."
LOGDIR=${LOGDIR:-gpu_logs}
STEPS=${STEPS:-"env smoke_fp32 trainer_vs_trl rollout_speed smoke_bf16 cuda_tests"}
PY=${PYTHON:-python3}
mkdir -p "$LOGDIR"

env_facts() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" - <<'PY'
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("transformers", "accelerate", "peft", "datasets", "trl", "pyarrow", "tokenizers", "huggingface_hub"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # report and go on: the steps that need it will fail with their own message
        print(name, "IMPORT FAILED:", type(e).__name__, e)
PY
}

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  local t0=$SECONDS
  timeout "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc $rc in $((SECONDS - t0)) s (limit $limit s)"
  tail -n 4 "$LOGDIR/$name.log"
}

export PYTHONUNBUFFERED=1
export -f env_facts; export PY
step env 60 bash -c env_facts
step smoke_fp32 120 "$PY" benchmarks/gpu_smoke.py
step trainer_vs_trl 200 "$PY" benchmarks/trainer_vs_trl.py --preset qwen2.5-0.5b --device cuda --dtype bfloat16 \
  --batch 64 --num-generations 8 --prompt-len 64 --completion-len 256 --warmup 1 --repeats 3
step rollout_speed 300 "$PY" benchmarks/rollout_speed.py --preset qwen2.5-0.5b --device cuda --dtype bfloat16 \
  --batch 64 --new 128 --repeats 3 --warmup 1 --timing subprocess
step smoke_bf16 90 "$PY" benchmarks/gpu_smoke.py --mixed-precision bf16
step cuda_tests 90 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_bench_trl.py tests/test_precision.py tests/test_replay.py
