#!/bin/bash
# stage 2 from run L's stage-1 model: distillation off (P0) vs w = 10 (P1), everything else equal
cd /work/main
for spec in "P0 0.0" "P1 10.0"; do
  set -- $spec
  OMP_NUM_THREADS=1 python scripts/train_latent_init.py icot_mult_4x4 --threads 1 --cot-model runs/li_icot_L \
    --out runs/li_icot_$1 --num-eval 200 start_stage=2 final_stage=2 max_steps_per_stage=1500 gate_threshold=0.6 \
    learning_rate=3e-4 "probe_head_tokens=[[-7,-6,-5],[-4,-3],[-2,-1]]" distill_weight=$2 \
    distill_teacher=icot_mult_4x4-cot-converged > runs/li_icot_$1.log 2>&1
done
