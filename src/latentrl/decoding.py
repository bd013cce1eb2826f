"""One forward per decode step for the rollout engine: a preallocated-KV-cache fast path and the generic fallback.

Why a fast path: at small and medium model sizes a decode step is bound by per-step overhead, not arithmetic. The
generic path (`LatentModel.forward_embeds` with a `DynamicCache`) rebuilds the attention mask and the rotary
cos/sin at every step and grows the cache with `torch.cat` (a full copy of every layer's keys and values per step).
`StaticCacheStepper` calls the HF decoder layers directly instead, with

* the keys/values written in place into a cache preallocated for prompt + completion (`_InPlaceKV`),
* the rotary cos/sin of every completion position computed once, by the model's own rotary module,
* the boolean 4-D attention mask built once and sliced.

It runs the same layers on the same inputs as the generic path, so the two give identical rollouts
(`tests/test_decoding.py` checks tokens, log-probs and payloads). Architectures whose backbone does more than
"rotary -> layers -> final norm" (GPT-2's learned positions, sliding windows, dynamic RoPE, non-SDPA attention)
use `CachedForwardStepper`, the generic path, automatically.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from latentrl.model import LatentModel

DecoderChoice = Literal["auto", "fast", "generic"]
DECODER_CHOICES = ("auto", "fast", "generic")

#: model types whose backbone forward is exactly embeds -> rotary(position_ids) -> decoder layers -> norm
FAST_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


#: (first row of each distinct prompt, row -> index of its distinct prompt)
SharedRows = tuple[torch.Tensor, torch.Tensor]


def shared_prompt_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> SharedRows | None:
    """(first row of each distinct prompt, row -> distinct prompt index), or None when no two rows share a prompt.

    The G completions of a GRPO group share one prompt: its forward (prefill, replay) runs once and the KV cache is
    copied to the G rows.
    """
    key = prompt_ids.masked_fill(~prompt_mask.bool(), -1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if uniq.shape[0] == key.shape[0]:
        return None
    rows = torch.arange(key.shape[0], device=key.device)
    first = torch.full((uniq.shape[0],), key.shape[0], dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


class DecoderStepper:
    """Prefill a left-padded prompt, then forward one new position per row per call; returns last hidden states.

    Shapes: B rows, P prompt positions (left-padded), at most `max_new` completion positions. The completion
    positions of every row are attended (rows that finished keep decoding; the engine masks their records).
    Rows with the same prompt share one prefill (`shared_prompt_rows`).
    """

    def __init__(self, model: LatentModel, prompt_mask: torch.Tensor, max_new: int):
        self.model = model
        self.B, self.P = prompt_mask.shape
        self.max_new = max_new
        self.prompt_mask = prompt_mask
        self.position = prompt_mask.long().cumsum(-1) - 1  # (B, P); -1 at padding
        # (B, P + C): the prompt's padding mask, then every completion column attended
        self.attn = torch.ones((self.B, self.P + max_new), dtype=torch.bool, device=prompt_mask.device)
        self.attn[:, : self.P] = prompt_mask
        self.t = 0  # decode forwards done so far

    def prefill(self, prompt_embeds: torch.Tensor, shared: SharedRows | None = None) -> torch.Tensor:
        """Run the prompts; (B, H) hidden state of each row's last prompt position. `shared` (from
        `shared_prompt_rows`): rows with the same prompt, which then go through the model once."""
        raise NotImplementedError

    def _prefill_cache(self, prompt_embeds: torch.Tensor, shared: SharedRows | None) -> tuple[torch.Tensor, DynamicCache]:
        """(B, P, H) prompt hidden states and a B-row KV cache, each distinct prompt run once."""
        rows = shared[0] if shared is not None else slice(None)
        _, hidden, cache = self.model.forward_embeds(
            prompt_embeds[rows], attention_mask=self.prompt_mask[rows].long(),
            position_ids=self.position[rows].clamp_min(0), past_key_values=DynamicCache(), use_cache=True,
            compute_logits=False,
        )
        if shared is not None:
            cache.reorder_cache(shared[1])
            hidden = hidden[shared[1]]
        self.prompt_hidden = hidden  # (B, P, H), for operators that read every prompt state (`needs_prompt_states`)
        return hidden, cache

    def step(self, embeds: torch.Tensor) -> torch.Tensor:
        """(B, H) last hidden state of the new position whose input embedding is `embeds` (B, H)."""
        raise NotImplementedError


class CachedForwardStepper(DecoderStepper):
    """The generic path: `LatentModel.forward_embeds` over a `DynamicCache`; works for any HF decoder-only LM."""

    def prefill(self, prompt_embeds: torch.Tensor, shared: SharedRows | None = None) -> torch.Tensor:
        hidden, self.cache = self._prefill_cache(prompt_embeds, shared)
        self.next_pos = self.position[:, -1:] + 1  # (B, 1)
        # SDPA takes a ready 4-D boolean mask as is: a view of `attn` saves HF rebuilding the mask at every step
        sdpa = getattr(self.model.model.config, "_attn_implementation", None) == "sdpa"
        self.attn4d = self.attn.view(self.B, 1, 1, -1) if sdpa else None
        return hidden[:, -1]

    def step(self, embeds: torch.Tensor) -> torch.Tensor:
        end = self.P + self.t + 1
        mask = self.attn4d[..., :end] if self.attn4d is not None else self.attn[:, :end].long()
        _, hidden, self.cache = self.model.forward_embeds(
            embeds[:, None], attention_mask=mask, position_ids=self.next_pos + self.t,
            past_key_values=self.cache, use_cache=True, compute_logits=False,
        )
        self.t += 1
        return hidden[:, -1]


def _plain_linear(m: nn.Module) -> bool:
    """An unwrapped nn.Linear (no LoRA / quantisation wrapper): its weight may be used directly."""
    return type(m) is nn.Linear


class _LeanLayer:
    """One decoder layer's decode step (one query position per row), written with as few ops as possible.

    Same math as the HF Llama-family layer: pre-norm attention with rotary q/k (optional per-head q/k norms, as
    Qwen3) and a gated MLP. Norm, activation and every wrapped projection are the model's own modules; plain
    q/k/v linears are fused into one matmul, so are plain bias-free gate/up linears, and plain bias-free o/down
    projections add the residual inside the matmul (`addmm`). The keys/values go straight into preallocated buffers.
    """

    def __init__(self, layer: nn.Module, fuse_qkv: bool, fuse_gate_up: bool = False):
        attn, mlp = layer.self_attn, layer.mlp
        self.in_norm, self.post_norm = _norm_fn(layer.input_layernorm), _norm_fn(layer.post_attention_layernorm)
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.n_kv = attn.k_proj.out_features // attn.head_dim
        self.n_q = attn.q_proj.out_features // attn.head_dim
        self.q_proj, self.k_proj, self.v_proj = attn.q_proj, attn.k_proj, attn.v_proj
        self.qkv_weight = self.qkv_bias = None
        if fuse_qkv:
            projs = (attn.q_proj, attn.k_proj, attn.v_proj)
            self.qkv_weight = torch.cat([p.weight for p in projs]).t()
            if any(p.bias is not None for p in projs):
                self.qkv_bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features)
                                           for p in projs])
        self.o_proj, self.o_weight = attn.o_proj, _residual_weight(attn.o_proj)
        self.gate_proj, self.up_proj, self.act = mlp.gate_proj, mlp.up_proj, mlp.act_fn
        self.gate_up_weight = None
        if fuse_gate_up:
            self.gate_up_weight = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t()
            self.n_inter = mlp.gate_proj.out_features
        self.down_proj, self.down_weight = mlp.down_proj, _residual_weight(mlp.down_proj)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int, mask: torch.Tensor) -> torch.Tensor:
        B, nq, nkv, D = x.shape[0], self.n_q, self.n_kv, self.head_dim
        y = self.in_norm(x)
        if self.qkv_weight is not None:
            qkv = (torch.addmm(self.qkv_bias, y, self.qkv_weight) if self.qkv_bias is not None
                   else torch.mm(y, self.qkv_weight)).view(B, nq + 2 * nkv, D)
            q, k, v = qkv[:, :nq], qkv[:, nq : nq + nkv], qkv[:, nq + nkv :]
        else:
            q = self.q_proj(y).view(B, nq, D)
            k = self.k_proj(y).view(B, nkv, D)
            v = self.v_proj(y).view(B, nkv, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # rotary: x * cos + rotate_half(x) * sin, with rotate_half(x) * sin == roll(x, D/2) * sin_signed exactly
        # (`sin` arrives with its first half negated)
        if self.q_norm is None and self.qkv_weight is not None:  # q and k adjacent: rotate both at once
            qk = qkv[:, : nq + nkv]
            qk = qk * cos + qk.roll(D // 2, -1) * sin
            q, k = qk[:, :nq], qk[:, nq:]
        else:
            q = q * cos + q.roll(D // 2, -1) * sin
            k = k * cos + k.roll(D // 2, -1) * sin
        k_cache[:, :, pos] = k
        v_cache[:, :, pos] = v
        # grouped-query attention with one query: the query heads of a KV head share its row (as HF's pack_gqa)
        o = F.scaled_dot_product_attention(q.reshape(B, nkv, nq // nkv, D), k_cache[:, :, : pos + 1],
                                           v_cache[:, :, : pos + 1], attn_mask=mask, scale=self.scaling)
        o = o.reshape(B, nq * D)
        x = torch.addmm(x, o, self.o_weight) if self.o_weight is not None else x + self.o_proj(o)
        y = self.post_norm(x)
        if self.gate_up_weight is not None:
            gu = torch.mm(y, self.gate_up_weight)
            h = self.act(gu[:, : self.n_inter]) * gu[:, self.n_inter :]
        else:
            h = self.act(self.gate_proj(y)) * self.up_proj(y)
        return torch.addmm(x, h, self.down_weight) if self.down_weight is not None else x + self.down_proj(h)


def _residual_weight(m: nn.Module) -> torch.Tensor | None:
    """W^T of a plain bias-free linear (so `addmm(residual, h, W^T)` adds the residual in the matmul), else None."""
    return m.weight.t() if _plain_linear(m) and m.bias is None else None


#: HF RMSNorm classes whose forward is exactly `weight * (x * rsqrt(mean(x^2) + eps))` computed in float32
_STANDARD_RMSNORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")


def _norm_fn(norm: nn.Module):
    """`F.rms_norm` (fewer ops, bitwise equal in float32) for a standard float32 RMSNorm, else the module itself."""
    if type(norm).__name__ in _STANDARD_RMSNORMS and norm.weight.dtype == torch.float32:
        shape, weight, eps = (norm.weight.shape[-1],), norm.weight, norm.variance_epsilon
        return lambda x: F.rms_norm(x, shape, weight, eps)
    return norm


class StaticCacheStepper(DecoderStepper):
    """The fast path for Llama-family decoder stacks (Llama, Qwen2, Qwen3, Mistral), see the module docstring."""

    #: fuse q/k/v (and, separately, gate/up) weights into one matmul only while the copy, made once per rollout, is
    #: small (it helps where dispatch overhead rules)
    FUSE_QKV_MAX_BYTES = 256 * 2**20

    def __init__(self, model: LatentModel, prompt_mask: torch.Tensor, max_new: int):
        super().__init__(model, prompt_mask, max_new)
        backbone = model.backbone()
        layers = list(backbone.layers[: backbone.config.num_hidden_layers])
        plain = all(_plain_linear(getattr(l.self_attn, n)) for l in layers for n in ("q_proj", "k_proj", "v_proj"))
        qkv_bytes = sum(getattr(l.self_attn, n).weight.nbytes for l in layers for n in ("q_proj", "k_proj", "v_proj"))
        fuse = plain and qkv_bytes <= self.FUSE_QKV_MAX_BYTES
        mlps = [getattr(l.mlp, n) for l in layers for n in ("gate_proj", "up_proj")]
        fuse_mlp = (all(_plain_linear(m) and m.bias is None for m in mlps)
                    and sum(m.weight.nbytes for m in mlps) <= self.FUSE_QKV_MAX_BYTES)
        self.layers = [_LeanLayer(l, fuse, fuse_mlp) for l in layers]
        self.norm = _norm_fn(backbone.norm)
        self.rotary = backbone.rotary_emb

    def prefill(self, prompt_embeds: torch.Tensor, shared: SharedRows | None = None) -> torch.Tensor:
        # the prompt goes through the generic forward (HF builds its causal + padding mask), then its cache is
        # copied once into buffers sized for the whole completion
        hidden, cache = self._prefill_cache(prompt_embeds, shared)
        total = self.P + self.max_new
        self.keys, self.values = [], []
        for layer in cache.layers[: len(self.layers)]:
            for src, dst in ((layer.keys, self.keys), (layer.values, self.values)):
                buf = src.new_empty((*src.shape[:2], total, src.shape[-1]))
                buf[:, :, : self.P] = src
                dst.append(buf)
        # cos/sin of every completion position, by the model's own rotary module, sliced per step
        positions = self.position[:, -1:] + 1 + torch.arange(self.max_new, device=self.position.device)
        self.cos, sin = self.rotary(hidden, positions)  # (B, C, head_dim)
        half = sin.shape[-1] // 2
        self.sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        # additive float mask (what SDPA would convert the boolean one to at every call)
        self.attn4d = torch.zeros(self.attn.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(
            ~self.attn, float("-inf")).view(self.B, 1, 1, -1)
        return hidden[:, -1]

    def step(self, embeds: torch.Tensor) -> torch.Tensor:
        t = self.t
        pos = self.P + t
        mask = self.attn4d[..., : pos + 1]
        cos, sin = self.cos[:, t : t + 1], self.sin[:, t : t + 1]
        x = embeds
        for layer, k, v in zip(self.layers, self.keys, self.values):
            x = layer(x, cos, sin, k, v, pos, mask)
        self.t = t + 1
        return self.norm(x)


def fast_path_unsupported(model: LatentModel) -> str | None:
    """Why `StaticCacheStepper` cannot run this model (None when it can)."""
    backbone = model.backbone()
    config = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAST_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {FAST_MODEL_TYPES}"
    if not all(hasattr(backbone, a) for a in ("layers", "norm", "rotary_emb")):
        return "the backbone has no layers / norm / rotary_emb"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r} is not 'sdpa'"
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in layer_types):
        return "the model has sliding-window layers"
    if model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return "Mistral with a sliding window"
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if "dynamic" in str(rope_type) or rope_type == "longrope":
        return f"rope type {rope_type!r} depends on the sequence length"
    if backbone.training and getattr(backbone, "gradient_checkpointing", False):
        return "gradient checkpointing is on in training mode"
    return None


def make_stepper(model: LatentModel, prompt_mask: torch.Tensor, max_new: int,
                 decoder: DecoderChoice = "auto") -> DecoderStepper:
    """The fast stepper when the model supports it (`decoder="auto"`), else the generic one."""
    if decoder not in DECODER_CHOICES:
        raise ValueError(f"decoder must be one of {DECODER_CHOICES}, got {decoder!r}")
    if decoder == "generic":
        return CachedForwardStepper(model, prompt_mask, max_new)
    reason = fast_path_unsupported(model)
    if reason is None:
        return StaticCacheStepper(model, prompt_mask, max_new)
    if decoder == "fast":
        raise ValueError(f"decoder='fast' is not available for this model: {reason}")
    return CachedForwardStepper(model, prompt_mask, max_new)
