"""Teacher-forced accuracy of a superposition init per latent index, on icot 4x4 gate problems.

    PYTHONPATH=src python docs/bench/chain_sum/superposition_init/per_latent.py MODEL TOKENS_PER_LATENT [chain]

For latent j (predicted at the position before it, after the *target* latents 0..j-1): top-1 = the heaviest target
token; ordered = the prediction's top-c tokens in order equal the chunk's distinct tokens in weight order (what a
positional superposition must get right to be read back); KL(q_j || p). Which latents a model cannot form even
teacher-forced says which part of the chain one forward pass cannot compute.
"""

import sys

import torch

from latentrl.data import load_examples
from latentrl.model import LatentModel
from latentrl.sft.superposition import SuperpositionSFTConfig, build_superposition_batch, encode_superposition_examples

torch.set_num_threads(1)
model = LatentModel.from_pretrained(sys.argv[1]).eval()
tpl = int(sys.argv[2])
chain = sys.argv[3] if len(sys.argv) > 3 else "columns_tens_first"
ex = load_examples("icot_mult", split="eval", n=256, seed=0, digits=4, chain=chain)
cfg = SuperpositionSFTConfig(tokens_per_latent=tpl, top_k=10, chunk_weights="positional")
b = build_superposition_batch(encode_superposition_examples(model.tokenizer, ex, cfg), model.tokenizer.pad_token_id)
lat, mask = b["latent_mask"], b["attention_mask"]
with torch.no_grad():
    emb = model.embed(b["input_ids"])
    mix = torch.einsum("btk,btkh->bth", b["latent_weights"], model.embed(b["latent_ids"]))
    logits = model.forward_embeds(torch.where(lat[..., None], mix, emb), attention_mask=mask,
                                  position_ids=(mask.cumsum(-1) - 1).clamp_min(0))[0]
first = lat.float().argmax(1)
rows = torch.arange(len(ex))
print(f"{sys.argv[1]} (tokens_per_latent={tpl}, chain={chain}, n={len(ex)})\nlatent  top-1  ordered  KL")
for j in range(int(lat.sum(1).max())):
    t = first + j
    ok = lat[rows, t]
    lp = logits[rows, t - 1][ok].float().log_softmax(-1)
    qi, q = b["latent_ids"][rows, t][ok], b["latent_weights"][rows, t][ok]
    top1 = (lp.argmax(-1) == qi[:, 0]).float().mean()
    n = (q > 0).sum(-1)
    pred = lp.topk(tpl).indices
    ordered = sum(torch.equal(pred[i, : n[i]], qi[i, : n[i]]) for i in range(len(qi))) / len(qi)
    kl = (q * (q.clamp_min(1e-12).log() - lp.gather(-1, qi))).sum(-1).mean()
    print(f"{j:6d}  {top1:.3f}  {ordered:.3f}  {kl:.3f}")
