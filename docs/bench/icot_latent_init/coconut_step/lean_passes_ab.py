"""Would a leaner forward for Coconut's thought passes speed up the icot recipe's stage-5 step? (issue #16)

The recipe's stage 5 (`icot_mult_4x4_columns`: 14 thoughts, batch 32) on the 4-layer CoT base
`docs/bench/icot_latent_init/base_ctf4L`: the KV-cached passes of `latentrl.sft.coconut.forward._thought_passes`
(the Hugging Face backbone, one call per pass) against the same passes written with as few ops as the decode fast path
uses (fused q/k/v and gate/up, `F.rms_norm`, rotary as `x * cos + roll(x) * sin`, keys/values joined by `cat`),
forward and backward of a scalar of the hidden states, alternated in one process. Prints the largest hidden-state and
relative gradient differences (they must agree) and the median milliseconds after two warm-ups.

    OMP_NUM_THREADS=1 taskset -c 0 env PYTHONPATH=src python docs/bench/icot_latent_init/coconut_step/lean_passes_ab.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

from latentrl.bench import suite_tasks
from latentrl.config import load_config
from latentrl.data import load_examples
from latentrl.model import LatentModel
from latentrl.sft.coconut import CoconutConfig
from latentrl.sft.coconut.data import build_stage_sample, tokenize_example
from latentrl.sft.coconut.forward import _thought_passes, collate_coconut

ROUNDS = 10


def stage5_batch(model: LatentModel):
    task = suite_tasks()["icot_mult_4x4"]
    examples = load_examples(task.dataset, split="train", n=32, seed=0,
                             **{**task.dataset_kwargs, "chain": "columns_tens_first"})
    cfg = load_config(CoconutConfig, None, ["c_thought=3", "thoughts_per_step=[3,3,3,3,2]", "max_latent_stage=5",
                                            "output_dir=/tmp/unused"])
    tok = model.tokenizer
    samples = [build_stage_sample(tokenize_example(tok, e), 5, cfg, model.latent_ids) for e in examples]
    return collate_coconut(samples, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def lean_pass(bb, x, pos, key_mask, past):
    """One pass over new columns `x` (B, t, H) at positions `pos`, attending to `key_mask` (B, S) over every key so
    far; `past`: per layer (k, v) or None. Returns (hidden after the final norm, per layer (k, v))."""
    B, t, H = x.shape
    cos, sin = bb.rotary_emb(x, pos)
    half = sin.shape[-1] // 2
    sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)[:, None]
    cos = cos[:, None]
    S = key_mask.shape[1]
    allowed = torch.ones(t, S, dtype=torch.bool).tril(S - t)[None] & key_mask[:, None]
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # a padded query attends to everything (its output unused)
    mask = torch.zeros(B, 1, t, S).masked_fill(~allowed[:, None], float("-inf"))
    new = []
    for li, layer in enumerate(bb.layers):
        a, mlp = layer.self_attn, layer.mlp
        nq, nkv, D = a.q_proj.out_features // a.head_dim, a.k_proj.out_features // a.head_dim, a.head_dim
        y = F.rms_norm(x, (H,), layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        qkv = F.linear(y, w, b).view(B, t, nq + 2 * nkv, D).transpose(1, 2)
        qk = qkv[:, : nq + nkv]
        qk = qk * cos + qk.roll(D // 2, -1) * sin
        q, k, v = qk[:, :nq], qk[:, nq:], qkv[:, nq + nkv:]
        if past is not None:
            k, v = torch.cat([past[li][0], k], 2), torch.cat([past[li][1], v], 2)
        new.append((k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=a.scaling, enable_gqa=nq != nkv)
        x = x + a.o_proj(o.transpose(1, 2).reshape(B, t, nq * D))
        y = F.rms_norm(x, (H,), layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        g, u = F.linear(y, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])).chunk(2, -1)
        x = x + mlp.down_proj(F.silu(g) * u)
    return F.rms_norm(x, (H,), bb.norm.weight, bb.norm.variance_epsilon), new


def lean_hidden(model: LatentModel, batch) -> torch.Tensor:
    bb = model.backbone()
    embeds = model.embed(batch.input_ids)
    L0, n = batch.latent_start, batch.num_latent
    attn, pos = batch.attention_mask.bool(), batch.position_ids
    h, past = lean_pass(bb, embeds[:, :L0], pos[:, :L0], attn[:, :L0], None)
    chunks, col = [h], L0
    pending = torch.where((n > 0)[:, None], h[:, -1], embeds[:, col])
    for p in range(1, int(n.max())):
        h, past = lean_pass(bb, pending[:, None], pos[:, col:col + 1], attn[:, :col + 1], past)
        chunks.append(h)
        col += 1
        pending = torch.where((n > p)[:, None], h[:, -1], embeds[:, col])
    h, _ = lean_pass(bb, torch.cat([pending[:, None], embeds[:, col + 1:]], 1), pos[:, col:], attn, past)
    return torch.cat([*chunks, h], 1)


def hf_hidden(model: LatentModel, batch) -> torch.Tensor:
    chunks, _, _ = _thought_passes(model, model.embed(batch.input_ids), batch, run_tail=True)
    return torch.cat(chunks, 1)


def main() -> None:
    torch.set_num_threads(1)
    model = LatentModel.from_pretrained("docs/bench/icot_latent_init/base_ctf4L", add_latent_tokens=True).train()
    batch = stage5_batch(model)
    print(f"batch {tuple(batch.input_ids.shape)}, thoughts {int(batch.num_latent.max())}")

    def grads(f):
        model.zero_grad(set_to_none=True)
        h = f(model, batch)
        h.square().mean().backward()
        return h.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (h1, g1), (h2, g2) = grads(hf_hidden), grads(lean_hidden)
    real = batch.attention_mask.bool()
    rel = max((g1[n] - g2[n]).abs().max().item() / (g1[n].abs().max().item() + 1e-12) for n in g1)
    print(f"max |hidden diff| {(h1 - h2)[real].abs().max().item():.2e}; max relative grad diff {rel:.2e}")
    times = {"hf": [], "lean": []}
    for r in range(ROUNDS):
        for name, f in (("hf", hf_hidden), ("lean", lean_hidden)):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            h = f(model, batch)
            t1 = time.perf_counter()
            h.square().mean().backward()
            if r >= 2:
                times[name].append((t1 - t0, time.perf_counter() - t1))
    for name, ts in times.items():
        fwd, bwd = statistics.median(a for a, _ in ts), statistics.median(b for _, b in ts)
        print(f"{name:5s} forward {1e3 * fwd:6.1f} ms  backward {1e3 * bwd:6.1f} ms  total {1e3 * (fwd + bwd):6.1f} ms")


if __name__ == "__main__":
    main()
