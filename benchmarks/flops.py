"""Model FLOPs of decoder-only transformers from their Hugging Face config, and accelerator peaks, for MFU.

Convention (PaLM, Chowdhery et al. 2022, appendix B): a matmul with an (m x n) weight costs 2*m*n FLOPs per token;
attention costs 2 * (heads * head_dim) FLOPs per (query, key) pair for the scores QK^T and as much for the
weighted sum of values, per layer; the backward pass costs twice the forward, so training = 3 x forward. PaLM writes
training as 6N + 12*L*H*Q*T per token with every token attending to all T positions; here attention is counted
over the causal pairs a decoder really computes (query i sees i keys, plus any cached prefix), i.e. about half of
PaLM's attention term for a sequence without prefix. Norms, activations, softmax, biases and the optimizer are not
counted (a few % at most), nor is recomputation (activation checkpointing): these are model FLOPs, not hardware
FLOPs. The LM head (hidden x vocab) is counted for the positions whose logits are computed, tied or not.

MFU = model FLOPs per second / the accelerator's dense peak for the dtype the matmuls run in (`peak_tflops`).
"""

from __future__ import annotations

import re
from typing import Any

# Dense (no structured sparsity) peak TFLOP/s from NVIDIA's data sheets, which list bf16/fp16 tensor-core rates
# with sparsity: dense is half of those. "float32" is the non-tensor-core FP32 rate, which is what fp32 matmuls get
# with torch's default (TF32 off for matmuls). Matched against torch.cuda.get_device_name(), first match wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 60.0}),
    ("GH200", {"bfloat16": 989.5, "float16": 989.5, "float32": 67.0}),  # Grace Hopper: an H100/H200 SXM-class GPU
    ("H200", {"bfloat16": 989.5, "float16": 989.5, "float32": 67.0}),  # H200 SXM
    ("H100 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 60.0}),
    ("H100 PCIe", {"bfloat16": 756.5, "float16": 756.5, "float32": 51.0}),
    ("H100", {"bfloat16": 989.5, "float16": 989.5, "float32": 67.0}),  # H100 SXM ("H100 80GB HBM3")
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
)


def peak_tflops(device_name: str | None, dtype: str) -> float | None:
    """Dense peak TFLOP/s of a known accelerator for `dtype`; None (MFU not reported) for anything else, CPUs too."""
    if not device_name:
        return None
    for key, table in PEAK_TFLOPS:  # whole words only: "A100" must not match an "RTX A1000"
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", device_name, re.IGNORECASE):
            return table.get(dtype)
    return None


# ------------------------------------------------------------------------------------------------ shapes
#: architectures whose layer layout the counts below describe (GPT-2; Llama-family pre-norm + gated MLP)
SUPPORTED_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")


def _shape(config: Any) -> dict[str, int]:
    if config.model_type not in SUPPORTED_TYPES:
        raise NotImplementedError(f"FLOP counts know {SUPPORTED_TYPES}, not model_type {config.model_type!r}")
    if config.model_type == "gpt2":
        h, heads = config.n_embd, config.n_head
        return dict(hidden=h, layers=config.n_layer, heads=heads, kv_heads=heads, head_dim=h // heads,
                    intermediate=config.n_inner or 4 * h, vocab=config.vocab_size)
    h, heads = config.hidden_size, config.num_attention_heads
    return dict(hidden=h, layers=config.num_hidden_layers, heads=heads,
                kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                head_dim=getattr(config, "head_dim", None) or h // heads, intermediate=config.intermediate_size,
                vocab=config.vocab_size)


def matmul_params(config: Any) -> int:
    """Weights of the decoder stack's matmuls (attention q/k/v/o, MLP), LM head and embeddings excluded."""
    s = _shape(config)
    h, q, kv = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    mlp_mats = 2 if config.model_type == "gpt2" else 3  # GPT-2: fc, proj; Llama family: gate, up, down
    return s["layers"] * (h * q + 2 * h * kv + q * h + mlp_mats * h * s["intermediate"])


def lm_head_params(config: Any) -> int:
    """hidden x vocab: the LM head's matmul, whether or not its weight is tied to the input embedding."""
    s = _shape(config)
    return s["hidden"] * s["vocab"]


def non_embedding_params(config: Any, include_lm_head: bool = False) -> int:
    """Parameters outside the embeddings (Kaplan et al.'s N): matmul weights, their biases and the norms.

    `include_lm_head` adds an *untied* LM head (a parameter of its own); a tied head is the embedding and never
    counted. Supports GPT-2 and the Llama family (Llama, Mistral, Qwen2, Qwen3).
    """
    s = _shape(config)
    h, L, inter = s["hidden"], s["layers"], s["intermediate"]
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    mt = config.model_type
    if mt == "gpt2":  # every Conv1D has a bias; LayerNorms have weight and bias
        per_layer = (3 * q + h) + (inter + h) + 2 * 2 * h
        final_norm = 2 * h
    elif mt in ("llama", "mistral", "qwen2", "qwen3"):
        if mt == "qwen2":
            attn_bias = q + 2 * kv  # q/k/v always have biases, o_proj never
        else:
            attn_bias = (q + 2 * kv + h) if getattr(config, "attention_bias", False) else 0
        mlp_bias = (2 * inter + h) if getattr(config, "mlp_bias", False) else 0
        qk_norm = 2 * s["head_dim"] if mt == "qwen3" else 0
        per_layer = attn_bias + mlp_bias + qk_norm + 2 * h  # + input and post-attention RMSNorm
        final_norm = h
    else:
        raise NotImplementedError(f"parameter count of model_type {mt!r}")
    head = lm_head_params(config) if include_lm_head and not config.tie_word_embeddings else 0
    return matmul_params(config) + L * per_layer + final_norm + head


# ------------------------------------------------------------------------------------------------ FLOPs
def causal_pairs(query_len: int, past_len: int = 0, causal: bool = True) -> int:
    """(query, key) pairs of `query_len` causal positions after `past_len` cached ones (each sees itself).

    `causal=False` counts the whole query x key rectangle instead: PaLM's convention, and what an attention that
    computes masked scores anyway (eager attention, `torch.utils.flop_counter`) performs.
    """
    if not causal:
        return query_len * (past_len + query_len)
    return query_len * past_len + query_len * (query_len + 1) // 2


def attention_flops(config: Any, pairs: int) -> int:
    """Forward FLOPs of attention scores and values over `pairs` (query, key) pairs, all layers."""
    s = _shape(config)
    return 4 * s["layers"] * s["heads"] * s["head_dim"] * pairs


def forward_flops(config: Any, tokens: int, pairs: int | None = None, logits: int | None = None) -> int:
    """Forward FLOPs of `tokens` positions through the decoder: 2 x matmul params x tokens + attention + LM head.

    `pairs`: (query, key) pairs attended over those positions (default: one causal sequence of `tokens`, see
    `causal_pairs`); `logits`: positions whose LM-head logits are computed (default: all `tokens`).
    """
    pairs = causal_pairs(tokens) if pairs is None else pairs
    logits = tokens if logits is None else logits
    return 2 * matmul_params(config) * tokens + attention_flops(config, pairs) + 2 * lm_head_params(config) * logits


def training_flops(forward: int) -> int:
    """Forward + backward (twice the forward: gradients w.r.t. activations and to weights)."""
    return 3 * forward


def update_flops(policy_forward: int, reference_forward: int = 0) -> int:
    """One RL update: a no-grad reference forward (0 without a KL term) + forward and backward of the policy."""
    return reference_forward + training_flops(policy_forward)


def replay_forward_flops(config: Any, rows: int, group: int, prompt_len: int, completion_len: int,
                         causal: bool = True) -> int:
    """Forward FLOPs of latentrl's `replay` over `rows` completions in groups of `group` sharing one prompt.

    Mirrors `latentrl.replay.replay` with shared prompts (every GRPO group): each distinct prompt runs once
    (`rows / group` causal sequences of `prompt_len`), then each row's first C-1 completion inputs attend to the
    cached prompt and to each other (the last completion input scores nothing and is not run), and C logits per
    row are computed (the prompt's last position and the C-1 completion positions). `causal`: see `causal_pairs`.
    """
    P, C = prompt_len, completion_len
    prompts = rows // group
    keep = C if C <= 1 else C - 1  # as replay: a 1-token completion keeps its only input
    tokens = prompts * P + rows * keep
    pairs = prompts * causal_pairs(P, causal=causal) + rows * causal_pairs(keep, P, causal=causal)
    return forward_flops(config, tokens, pairs, logits=rows * C)
