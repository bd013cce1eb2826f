#!/bin/bash
cd /work/main
OMP_NUM_THREADS=1 python scripts/train_latent_init.py icot_mult_4x4 --threads 1 --cot-model runs/li_icot_L \
  --out runs/li_icot_Q --num-eval 200 --split-steps "(" max_latent_stage=6 start_stage=2 final_stage=3 \
  max_steps_per_stage=2500 gate_threshold=0.6 gate_next_steps=2 learning_rate=3e-4 \
  "thoughts_per_step=[3,2,3,2,3,1]" "probe_head_tokens=[[-7,-6,-5],[-4,-3],[-2,-1]]" > runs/li_icot_Q.log 2>&1
