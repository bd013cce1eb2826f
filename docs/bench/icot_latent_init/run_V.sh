#!/bin/bash
# run V: U's stage-2 model, 6,000 more stage-2 steps (a fresh AdamW; nothing else changed)
cd /work/main
OMP_NUM_THREADS=1 python scripts/train_latent_init.py icot_mult_4x4 --threads 1 --cot-model runs/li_icot_U \
  --out runs/li_icot_V --num-eval 1000 start_stage=2 final_stage=2 max_steps_per_stage=6000 gate_threshold=0.6 \
  learning_rate=3e-4 "probe_head_tokens=[[-7,-6,-5],[-4,-3],[-2,-1]]" > runs/li_icot_V.log 2>&1
