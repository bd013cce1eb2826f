"""Our rollout at the trainer benchmark's shape (tiny Qwen2, hidden 128, 2 layers, V = 62, batch 32 = 4 prompts x 8,
prompt 16, 64 tokens), one thread:

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/trainer_vs_trl/rollout_floor.py profile
    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/trainer_vs_trl/rollout_floor.py eager
    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/trainer_vs_trl/rollout_floor.py compile

profile: wall time of 8 rollouts, then torch.profiler's table of one. eager / compile: the fast decode step alone
(`StaticCacheStepper.step`, eager or under `torch.compile(dynamic=True)`): each pass builds a fresh stepper,
prefills, then times 64 `step` calls (LM head and sampling excluded); the first compiled pass includes compiling.
"""
import sys
import time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from latentrl.decoding import StaticCacheStepper
from latentrl.model import LatentModel
from latentrl.rollout import SamplingParams, generate_rollout
from latentrl.tokenizer import build_word_tokenizer

torch.set_num_threads(1)
tok = build_word_tokenizer([f"w{i}" for i in range(32)])
cfg = Qwen2Config(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256)
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
model = LatentModel(AutoModelForCausalLM.from_config(cfg).eval(), tok)
B, P, C = 32, 16, 64
mask = torch.ones(B, P, dtype=torch.bool)
ids = torch.randint(0, len(tok), (4, P)).repeat_interleave(8, 0)
mode = sys.argv[1] if len(sys.argv) > 1 else "profile"

if mode == "profile":
    sampling = SamplingParams(max_new_positions=C, temperature=1.0, stop_token_ids=[])
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        t = time.perf_counter()
        generate_rollout(model, ids, mask, sampling, generator=gen)
        print(f"rollout {(time.perf_counter() - t) * 1000:.1f} ms")
    with torch.profiler.profile() as prof:
        generate_rollout(model, ids, mask, sampling, generator=gen)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
else:
    for r in range(4):
        stepper = StaticCacheStepper(model, mask, C)
        step = stepper.step if mode == "eager" else torch.compile(stepper.step, dynamic=True)
        with torch.no_grad():
            stepper.prefill(model.embed(ids))
            x = model.embed(ids[:, -1])
            t = time.perf_counter()
            for _ in range(C):
                step(x)
            dt = time.perf_counter() - t
        print(mode, r, f"{dt * 1000:.1f} ms for {C} steps", flush=True)
