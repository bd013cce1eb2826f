#!/bin/bash
# run W: superposition SFT (Latent-GRPO's init) on icot 4x4: 4 CoT tokens per latent (46 -> 12 latents), gated on the model's
# own latents (generated accuracy every 100 steps, 256 gate problems), 15,000-step cap
cd /work/main
OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/train_superposition_init.py runs/li_icot_W task=icot_mult_4x4 \
  tokens_per_latent=4 num_train=20000 max_steps=15000 stage_advance=converged gate_metric=generated_accuracy \
  gate_threshold=0.85 > runs/li_icot_W.log 2>&1
