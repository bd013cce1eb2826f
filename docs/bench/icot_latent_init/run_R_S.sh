#!/bin/bash
# stage 2 from run L's stage-1 model, as P0, one change each: R = fresh AdamW every pass over the data (625 steps);
# S = lr 1e-3
cd /work/main
while pgrep -f "li_icot_Q" >/dev/null; do sleep 10; done
for spec in "R reset_optimizer=epoch" "S learning_rate=1e-3"; do
  set -- $spec
  OMP_NUM_THREADS=1 python scripts/train_latent_init.py icot_mult_4x4 --threads 1 --cot-model runs/li_icot_L \
    --out runs/li_icot_$1 --num-eval 200 start_stage=2 final_stage=2 max_steps_per_stage=1500 gate_threshold=0.6 \
    learning_rate=3e-4 "probe_head_tokens=[[-7,-6,-5],[-4,-3],[-2,-1]]" $2 > runs/li_icot_$1.log 2>&1
done
