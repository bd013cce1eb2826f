"""benchmarks/flops.py: parameter counts against real models, FLOPs against hand counts and torch's FLOP counter."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import flops  # noqa: E402
import model_presets  # noqa: E402

SMALL = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
CONFIGS = {
    "qwen2_tied": lambda: Qwen2Config(**SMALL, tie_word_embeddings=True),
    "qwen2_untied": lambda: Qwen2Config(**SMALL, tie_word_embeddings=False),
    "llama_biases": lambda: LlamaConfig(**SMALL, attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
    "llama_head_dim_mqa": lambda: LlamaConfig(**{**SMALL, "num_key_value_heads": 1}, head_dim=16),
    "qwen3": lambda: Qwen3Config(**SMALL, head_dim=16),
    "mistral": lambda: MistralConfig(**SMALL),
    "gpt2": lambda: GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                               eos_token_id=0),
}


def embedding_ids(model) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_non_embedding_params_match_the_model(name):
    cfg = CONFIGS[name]()
    model = AutoModelForCausalLM.from_config(cfg)
    emb = embedding_ids(model)
    head = id(model.get_output_embeddings().weight)
    params = {id(p): p for p in model.parameters()}  # a tied head is the embedding: counted once
    without_head = sum(p.numel() for i, p in params.items() if i not in emb and i != head)
    with_head = sum(p.numel() for i, p in params.items() if i not in emb)
    assert flops.non_embedding_params(cfg) == without_head
    assert flops.non_embedding_params(cfg, include_lm_head=True) == with_head


def test_qwen25_05b_preset_counts():
    """Qwen2.5-0.5B's model card: 0.49B parameters, 0.36B of them outside the (tied) embedding."""
    args = type("Args", (), {"preset": "qwen2.5-0.5b"})()
    model_presets.resolve_shape(args, min_positions=0)
    cfg = model_presets.hf_config(args, args.vocab_size)
    n = flops.non_embedding_params(cfg)
    assert n == 357_898_112 and round(n / 1e9, 2) == 0.36
    assert round((n + cfg.vocab_size * cfg.hidden_size) / 1e9, 2) == 0.49


def test_forward_flops_by_hand():
    cfg = CONFIGS["qwen2_tied"]()  # hidden 32, 2 layers, 4 heads of 8, 2 KV heads, MLP 48, vocab 50
    per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 48  # q, k+v, o, gate/up/down = 7680
    assert flops.matmul_params(cfg) == 2 * per_layer
    # one causal sequence of 7 tokens: 7*8/2 = 28 (query, key) pairs; 4 FLOPs per pair per head dim per head
    expected = 2 * 15360 * 7 + 4 * 2 * 4 * 8 * 28 + 2 * 32 * 50 * 7  # = 215040 + 7168 + 22400
    assert flops.forward_flops(cfg, 7) == expected == 244608
    assert flops.causal_pairs(7) == 28 and flops.causal_pairs(3, past_len=5) == 3 * 5 + 6
    assert flops.causal_pairs(3, past_len=5, causal=False) == 24
    assert flops.training_flops(expected) == 3 * expected
    assert flops.update_flops(100, 10) == 310 and flops.update_flops(100) == 300
    # PaLM: training = 6N + 12*L*H*Q*T per token, T attended positions each (non-causal count)
    T = 7
    palm = T * (6 * flops.matmul_params(cfg) + 12 * 2 * 4 * 8 * T)
    assert flops.training_flops(flops.forward_flops(cfg, T, flops.causal_pairs(T, causal=False), logits=0)) == palm


def _eager(cfg):
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")


@pytest.mark.parametrize("name", ["qwen2_tied", "llama_head_dim_mqa"])
def test_forward_and_training_flops_match_torch_flop_counter(name):
    """Eager attention computes every (query, key) score, so torch counts the non-causal rectangle."""
    cfg = CONFIGS[name]()
    model = _eager(cfg)
    B, T = 3, 7
    fwd = flops.forward_flops(cfg, B * T, pairs=B * flops.causal_pairs(T, causal=False))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, cfg.vocab_size, (B, T)))
    assert counter.get_total_flops() == fwd
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, cfg.vocab_size, (B, T))).logits.sum().backward()
    assert counter.get_total_flops() == flops.training_flops(fwd)


def test_replay_flops_match_latentrl_replay():
    """`replay_forward_flops` mirrors latentrl's replay: shared prompts, C-1 completion inputs, C logits per row."""
    from latentrl.model import LatentModel
    from latentrl.replay import replay
    from latentrl.rollout import Rollout
    from latentrl.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["a", "b"])
    cfg = Qwen2Config(**{**SMALL, "vocab_size": len(tok)}, tie_word_embeddings=True)
    lm = LatentModel(_eager(cfg).eval(), tok)
    B, G, P, C = 6, 3, 5, 4
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, len(tok), (B // G, P), generator=g).repeat_interleave(G, 0)
    none = torch.zeros(B, C, dtype=torch.bool)
    rollout = Rollout(prompt_ids=prompts, prompt_mask=torch.ones(B, P, dtype=torch.bool),
                      completion_ids=torch.randint(4, len(tok), (B, C), generator=g), completion_mask=~none,
                      latent_mask=none, forced_mask=none, logprobs=torch.zeros(B, C), truncated=none[:, 0], payload={})
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        replay(lm, None, rollout, compute_entropy=False)
    assert counter.get_total_flops() == flops.replay_forward_flops(cfg, B, G, P, C, causal=False)
    assert flops.replay_forward_flops(cfg, B, G, P, C) < flops.replay_forward_flops(cfg, B, G, P, C, causal=False)


def test_peak_tflops_table():
    assert flops.peak_tflops("NVIDIA H200", "bfloat16") == 989.5
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5
    assert flops.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.5
    assert flops.peak_tflops("NVIDIA H200 NVL", "bfloat16") == 835.5
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 19.5
    assert flops.peak_tflops("NVIDIA H200", "float8") is None
    assert flops.peak_tflops("NVIDIA GeForce RTX 3090", "bfloat16") is None
    assert flops.peak_tflops("NVIDIA RTX A1000 6GB Laptop GPU", "bfloat16") is None  # whole words: not an A100
    assert flops.peak_tflops("NVIDIA GH200 480GB", "bfloat16") == 989.5


def test_unknown_architecture_is_refused():
    """FLOPs of a layout the counts do not describe would be silently wrong: refused instead."""
    from transformers import OPTConfig

    with pytest.raises(NotImplementedError, match="opt"):
        flops.matmul_params(OPTConfig())


def test_one_token_completion_keeps_its_input():
    """replay runs the only input of a 1-token completion (keep = C for C <= 1)."""
    cfg = CONFIGS["qwen2_tied"]()
    one = flops.replay_forward_flops(cfg, rows=4, group=2, prompt_len=3, completion_len=1)
    tokens, pairs = 2 * 3 + 4 * 1, 2 * flops.causal_pairs(3) + 4 * flops.causal_pairs(1, 3)
    assert one == flops.forward_flops(cfg, tokens, pairs, logits=4)
    assert flops.peak_tflops(None, "float32") is None
