#!/bin/bash
# One process with two threads vs two processes with one thread each (torchrun; `accelerate launch --cpu` starts
# one process on a CPU machine, which the first version of this script used by mistake; per-device batch 16:
# the same global batch of 32), the icot recipe at stage 5 from the CoT base, 240 steps each, three alternated pairs;
# prints each run's seconds a step over steps 81-240. Run from anywhere: bash processes_vs_threads.sh
cd "$(dirname "$0")/../../../.."
COMMON="icot_mult_4x4_columns --cot-model docs/bench/icot_latent_init/base_ctf4L --num-eval 20 start_stage=5 max_steps_per_stage=240 gate_eval_steps=100000 save_steps=100000 num_train_examples=4000 --finish-steps 0"
rate() { python - "$1" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"train_wall_s"' in l]
a = [x for x in r if x["step"] in (80, 240)]
print(sys.argv[1], "s/step over steps 81-240:", round((a[1]["train_wall_s"] - a[0]["train_wall_s"]) / 160, 4))
PY
}
for i in 1 2 3; do
  rm -rf /tmp/ab_t$i /tmp/ab_p$i
  OMP_NUM_THREADS=2 PYTHONPATH=src timeout -s INT 120 python scripts/train_latent_init.py $COMMON --threads 2 --out /tmp/ab_t$i > /tmp/ab_t$i.log 2>&1
  rate /tmp/ab_t$i
  OMP_NUM_THREADS=1 PYTHONPATH=src timeout -s INT 120 torchrun --nproc_per_node 2 scripts/train_latent_init.py $COMMON --threads 1 --out /tmp/ab_p$i per_device_train_batch_size=16 > /tmp/ab_p$i.log 2>&1
  rate /tmp/ab_p$i
done
