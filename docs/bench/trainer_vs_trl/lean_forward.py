"""Would a leaner training forward close the trainer-vs-TRL gap at the default shape? (issue 18, goal 3)

The benchmark's model (Qwen2, hidden 128, 2 layers, vocab 62) over 32 sequences of 80 tokens, forward + backward of
the backbone, two ways, interleaved in one process:

- `hf`: the Hugging Face backbone as the trainers run it (separate q/k/v and gate/up linears, RMSNorm and rotary as
  several element-wise ops each);
- `lean`: the same math with as few ops as the decode fast path uses (`F.rms_norm`, one fused q/k/v matmul, one
  fused gate/up matmul, rotary as `x * cos + roll(x) * sin`, SDPA with `is_causal`).

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/trainer_vs_trl/lean_forward.py

Prints the largest hidden-state and gradient differences (the two must agree) and the median forward / backward
milliseconds of each over the rounds after two warm-ups.
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, "benchmarks")
import model_presets  # noqa: E402
import trainer_vs_trl as tv  # noqa: E402

from latentrl.tokenizer import build_word_tokenizer  # noqa: E402

B, T, ROUNDS = 32, 80, 15


def build():
    args = tv.parse_args([])
    tok = build_word_tokenizer([f"w{i}" for i in range(args.words)])
    cfg = model_presets.hf_config(args, len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).train()
    return model.model, torch.randint(0, len(tok), (B, T))


def hf(bb, ids):
    return bb(input_ids=ids, use_cache=False).last_hidden_state


def lean(bb, ids):
    x = bb.embed_tokens(ids)
    cos, sin = bb.rotary_emb(x, torch.arange(T)[None].expand(B, T))
    half = sin.shape[-1] // 2
    sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)[:, None]
    cos = cos[:, None]
    for layer in bb.layers:
        a, mlp = layer.self_attn, layer.mlp
        nq, nkv, D = a.q_proj.out_features // a.head_dim, a.k_proj.out_features // a.head_dim, a.head_dim
        y = F.rms_norm(x, (x.shape[-1],), layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        qkv = F.linear(y, w, b).view(B, T, nq + 2 * nkv, D).transpose(1, 2)
        qk = qkv[:, : nq + nkv]
        qk = qk * cos + qk.roll(D // 2, -1) * sin
        o = F.scaled_dot_product_attention(qk[:, :nq], qk[:, nq:], qkv[:, nq + nkv:], is_causal=True,
                                           scale=a.scaling, enable_gqa=True)
        x = x + a.o_proj(o.transpose(1, 2).reshape(B, T, nq * D))
        y = F.rms_norm(x, (x.shape[-1],), layer.post_attention_layernorm.weight,
                       layer.post_attention_layernorm.variance_epsilon)
        g, u = F.linear(y, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])).chunk(2, -1)
        x = x + mlp.down_proj(F.silu(g) * u)
    return F.rms_norm(x, (x.shape[-1],), bb.norm.weight, bb.norm.variance_epsilon)


def grads(bb, f, ids):
    bb.zero_grad(set_to_none=True)
    h = f(bb, ids)
    h.square().mean().backward()
    return h.detach(), {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}


def main() -> None:
    torch.set_num_threads(1)
    bb, ids = build()
    (h1, g1), (h2, g2) = grads(bb, hf, ids), grads(bb, lean, ids)
    print(f"max |hidden diff| {(h1 - h2).abs().max().item():.2e}; "
          f"max |grad diff| {max((g1[n] - g2[n]).abs().max().item() for n in g1):.2e} over {len(g1)} tensors")
    times = {"hf": [], "lean": []}
    for r in range(ROUNDS):
        for name, f in (("hf", hf), ("lean", lean)):
            bb.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            h = f(bb, ids)
            t1 = time.perf_counter()
            h.square().mean().backward()
            t2 = time.perf_counter()
            if r >= 2:
                times[name].append((t1 - t0, t2 - t1))
    for name, ts in times.items():
        fwd, bwd = statistics.median(a for a, _ in ts), statistics.median(b for _, b in ts)
        print(f"{name:5s} forward {1e3 * fwd:6.1f} ms  backward {1e3 * bwd:6.1f} ms  total {1e3 * (fwd + bwd):6.1f} ms")


if __name__ == "__main__":
    main()
