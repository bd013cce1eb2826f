#!/bin/bash
# run X: as run W, one change: positional chunk weights (the ordered chunk survives in the latent target)
cd /work/main
OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/train_superposition_init.py runs/li_icot_X task=icot_mult_4x4 \
  tokens_per_latent=4 chunk_weights=positional num_train=20000 max_steps=15000 stage_advance=converged gate_metric=generated_accuracy \
  gate_threshold=0.85 > runs/li_icot_X.log 2>&1
