"""Tiny random-weight models for tests and benchmarks (no model hub is needed).

Shapes, not weights, decide speed, and random weights are enough to check that rollouts, replays and losses
agree; the same builders are what TRL's test-suite style looks like for HF models.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from latentrl.model import LatentModel
from latentrl.tokenizer import build_word_tokenizer

ARCHITECTURES = ("qwen2", "llama", "gpt2")


def tiny_config(arch: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4, max_positions: int = 512):
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                           max_position_embeddings=max_positions, tie_word_embeddings=True)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
                           tie_word_embeddings=False)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions)
    raise ValueError(f"unknown architecture {arch!r}; allowed: {ARCHITECTURES}")


def tiny_latent_model(arch: str = "qwen2", words: list[str] | None = None, seed: int = 0, add_latent_tokens: bool = True,
                      **shape) -> LatentModel:
    """A random-weight HF causal LM with an in-process word tokenizer (and Coconut latent tokens)."""
    tok = build_word_tokenizer(words or [])
    torch.manual_seed(seed)
    cfg = tiny_config(arch, vocab_size=len(tok) + 3, **shape)
    cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    lm = LatentModel(model, tok)
    if add_latent_tokens:
        lm.add_latent_tokens(init_from="<<")
    return lm


def word_count_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """A deterministic reward that varies across completions (words mod 3), so groups carry a non-zero advantage
    even on a random model; TRL's reward signature."""
    return [float(len(c.split()) % 3) for c in completions]


def char_sum_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """Like `word_count_reward`, but varies with every character (character codes mod 3)."""
    return [float(sum(map(ord, c)) % 3) for c in completions]


def tiny_chain_sum_model(seed: int = 0, hidden: int = 32) -> LatentModel:
    """A random tiny Qwen2 with the chain_sum vocabulary and Coconut latent tokens."""
    from latentrl.data import task_vocabulary

    return tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=seed, hidden=hidden)
