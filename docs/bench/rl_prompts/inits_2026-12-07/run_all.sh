#!/bin/bash
# issue 16 item 4 from the 2026-12-07 inits: RL from each shipped init, paired against it (n = 500)
# As run on 2026-12-07 (core 1 of 2, beside other jobs); results copied into docs/bench/rl_prompts/inits_2026-12-07/.
# cs_lgrpo_lik_400 ran from the two-command chain_sum init (96.2 %) and was re-run from the one-command one (96.0 %).
cd /work/main
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src
R=docs/bench/chain_sum/superposition_init/rl_from_init.py
run() { name=$1; shift; echo "== $name $(date +%T)"; /usr/bin/time -f "%e s" python $R runs/item4/$name "$@" > runs/item4/$name.log 2>&1; tail -1 runs/item4/$name.log; }
run icot_lgrpo_lik_400 task=icot_mult_4x4 method=latent_grpo latent.gumbel_logprob=likelihood latent.noise_scale=0.1 max_steps=400 learning_rate=5e-6
run cs_lgrpo_lik_400 task=chain_sum method=latent_grpo latent.gumbel_logprob=likelihood latent.noise_scale=0.1 max_steps=400 learning_rate=5e-6
run icot_cgrpo_400 task=icot_mult_4x4 method=coconut_grpo max_steps=400
run icot_lrl_40 task=icot_mult_4x4 method=latent_rl
run cs_cgrpo_400 task=chain_sum method=coconut_grpo max_steps=400
run cs_lrl_40 task=chain_sum method=latent_rl
run icot_lgrpo_lik_1200 task=icot_mult_4x4 method=latent_grpo latent.gumbel_logprob=likelihood latent.noise_scale=0.1 max_steps=1200 learning_rate=5e-6
echo "== done $(date +%T)"
