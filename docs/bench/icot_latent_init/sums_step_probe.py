"""Where the sums step of a `chain=columns` stage-4 model forms (or fails to form) a column sum S_c.

Teacher-forced, on generated problems (`load_examples("icot_mult", "eval", seed=7)`, unused by training): the model's
own 12 thoughts (its KV-cached Coconut passes), then `<|end-latent|>` and the true sums step. At the position that
predicts S_c's units digit, for every layer's output (0 = the input), logistic probes fitted on N_FIT problems and
scored on N_TEST others read each addend p_j[c], the sum S_c and S_c mod 10; and each attention head's weight on
each product's 3 thoughts (mean over problems) says which thoughts that position reads. Run on the HF model's own
eager attention (`output_attentions`).

    OMP_NUM_THREADS=1 PYTHONPATH=src:docs/bench/icot_latent_init python docs/bench/icot_latent_init/sums_step_probe.py MODEL_DIR [N_FIT [N_TEST [C ...]]]
"""

from __future__ import annotations

import json
import sys

import torch
from partials_probe import probe_accuracy  # same folder

from latentrl.data import load_examples
from latentrl.data.tasks import icot_mult_example, icot_mult_factors
from latentrl.model import LatentModel
from latentrl.sft.coconut import CoconutConfig
from latentrl.sft.coconut.data import build_stage_sample, tokenize_example
from latentrl.sft.coconut.forward import _insert_thoughts, _thought_passes, collate_coconut

GROUP, PRODUCTS = 3, 4


def main() -> None:
    model_dir = sys.argv[1]
    n_fit = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    columns = [int(c) for c in sys.argv[4:]] or [3, 4]
    torch.set_num_threads(1)
    lm = LatentModel.from_pretrained(model_dir)
    lm.model.set_attn_implementation("eager")
    cfg = CoconutConfig(c_thought=GROUP, thoughts_per_step=[3, 3, 3, 3, 2], max_latent_stage=5)
    examples = load_examples("icot_mult", "eval", n=n_fit + n_test, seed=7, digits=4, chain="columns")
    samples = [build_stage_sample(tokenize_example(lm.tokenizer, ex), PRODUCTS, cfg, lm) for ex in examples]
    if len({len(s.input_ids) for s in samples}) != 1 or len({s.latent_start for s in samples}) != 1:
        raise ValueError("expected sequences of one length (4x4 problems)")
    states: list[list[torch.Tensor]] = []  # per batch: per layer (B, T, H)
    attn: list[list[torch.Tensor]] = []  # per batch: per layer (B, heads, T, T)
    with torch.no_grad():
        for s in range(0, len(samples), 250):
            batch = collate_coconut(samples[s:s + 250], lm.tokenizer.pad_token_id).to(lm.device)
            embeds = lm.embed(batch.input_ids)
            _, thoughts, _ = _thought_passes(lm, embeds, batch, run_tail=False)
            out = lm.backbone()(inputs_embeds=_insert_thoughts(embeds, thoughts, batch.latent_start),
                                attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                                output_hidden_states=True, output_attentions=True, return_dict=True)
            states.append([h.float() for h in out.hidden_states])
            attn.append([a.float() for a in out.attentions])
    hidden = [torch.cat([b[i] for b in states]) for i in range(len(states[0]))]
    attentions = [torch.cat([b[i] for b in attn]) for i in range(len(attn[0]))]
    start = samples[0].latent_start
    sums_at = start + PRODUCTS * GROUP + 1  # the `=` of the sums step, right after <|end-latent|>
    products = []
    for ex in examples:
        ref = icot_mult_example(*icot_mult_factors(ex.question), chain="columns")
        rows = [[int(d) for d in step.split() if d != "+"] for step in ref.steps[:PRODUCTS]]
        products.append([r + [0] * (8 - len(r)) for r in rows])
    p = torch.tensor(products)
    fit, test = slice(0, n_fit), slice(n_fit, n_fit + n_test)
    result = {}
    for c in columns:
        q = sums_at + 2 * c  # the token before S_c's units digit (`=` for c = 0, else S_{c-1}'s tens)
        targets = {f"p{j}[{c}]": (p[:, j, c], 10) for j in range(PRODUCTS)}
        total = p[:, :, c].sum(1)
        targets[f"S_{c}"], targets[f"S_{c} mod 10"] = (total, 9 * PRODUCTS + 1), (total % 10, 10)
        layers = {}
        for li, h in enumerate(hidden):
            x = h[:, q]
            layers[f"layer_{li}"] = {name: round(probe_accuracy(x[fit], y[fit], x[test], y[test], classes=k), 3)
                                     for name, (y, k) in targets.items()}
        heads = {}
        for li, a in enumerate(attentions):
            w = a[:, :, q]  # (N, heads, T)
            for hd in range(w.shape[1]):
                groups = [float(w[:, hd, start + GROUP * j:start + GROUP * (j + 1)].sum(-1).mean())
                          for j in range(PRODUCTS)]
                heads[f"layer_{li + 1}_head_{hd}"] = [round(g, 2) for g in groups]
        result[f"S_{c}"] = {"probe_accuracy": layers, "attention_on_products_p0_p3": heads}
    print(json.dumps({"model": model_dir, "n_fit": n_fit, "n_test": n_test, **result}))


if __name__ == "__main__":
    main()
