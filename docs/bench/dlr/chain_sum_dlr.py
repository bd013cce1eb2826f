"""DLR (reading 2) on chain_sum: an autoregressive assistant writes the thoughts of the frozen `chain_sum-coconut`.

    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/dlr/chain_sum_dlr.py --out docs/bench/dlr/run_seed0 --seed 0

1. frozen main model = the shipped latent init `chain_sum-coconut` (reads its own 7 continuous thoughts);
2. distillation: the assistant (a small causal transformer over the main model's prompt states, `ChainAssistant`)
   regresses the main model's own thoughts on training problems (teacher forcing, noisy fed-back thoughts);
3. DLR: K chains per prompt from the Gaussian head, greedy single-pass decoding by the frozen main model, reward =
   correctness, high-value filter, loss = PG + InfoNCE + decoding NLL of kept answers (`dlr_chain_loss`);
   the checkpoint kept is the one with the best accuracy on a VALIDATION split (not the test problems);
4. test (held-out suite problems, n = --num-test): paired greedy Pass@1 of the main model with its own thoughts vs
   with the distilled chain vs with the DLR chain (paired SE of the difference, same problems), the swap check
   (`latentrl.thought_dependence` on the assistant's chains), main-model weights bit-identical and its logits on
   unrelated prompts unchanged.
Everything printed is also written to <out>/result.json.
Results, commands and the runs behind the defaults: docs/bench/dlr/README.md.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from pathlib import Path

import torch

from latentrl.assets import model_path
from latentrl.bench import check_disjoint, suite_tasks
from latentrl.data import load_examples
from latentrl.data.schema import as_rows
from latentrl.methods.dlr.chain import ChainAssistant, CoconutFrame, FixedChainOperator, distill_loss, dlr_chain_loss
from latentrl.model import LatentModel
from latentrl.thought_dependence import thought_dependence


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n - 1, 1))


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).float()
    n = d.numel()
    return {"diff": float(d.mean()), "se": float(d.std(unbiased=True) / math.sqrt(n)), "n": n,
            "a_only": int(((a > 0) & (b == 0)).sum()), "b_only": int(((b > 0) & (a == 0)).sum())}


class Encoded:
    """Rows with their tokenized prompts, prompt states and the main model's own thoughts / correctness."""

    def __init__(self, frame: CoconutFrame, rows, batch: int = 500):
        self.rows = rows
        ids_l, mask_l, st_l, th_l, ok_l = [], [], [], [], []
        for s in range(0, len(rows), batch):
            part = rows[s : s + batch]
            ids, mask = frame.tokenize(part)
            th, ro = frame.own_thoughts(ids, mask)
            _, ok = frame.score(part, ro)
            ids_l.append(ids), mask_l.append(mask), st_l.append(frame.prompt_states(ids, mask)), th_l.append(th)
            ok_l.append(ok)
        P = {x.shape[1] for x in ids_l}
        assert len(P) == 1, f"prompts of different lengths across batches: {P}"
        self.ids, self.mask = torch.cat(ids_l), torch.cat(mask_l)
        self.states, self.thoughts, self.own_ok = torch.cat(st_l), torch.cat(th_l), torch.cat(ok_l)


@torch.no_grad()
def chains_of(asst: ChainAssistant, enc: Encoded, batch: int = 500) -> torch.Tensor:
    asst.eval()
    out = [asst.sample(enc.states[s : s + batch], enc.mask[s : s + batch], deterministic=True)[0]
           for s in range(0, len(enc.rows), batch)]
    return torch.cat(out)


@torch.no_grad()
def accuracy(frame: CoconutFrame, enc: Encoded, chain: torch.Tensor, batch: int = 500) -> torch.Tensor:
    oks = []
    for s in range(0, len(enc.rows), batch):
        ro = frame.decode(enc.ids[s : s + batch], enc.mask[s : s + batch], chain[s : s + batch])
        oks.append(frame.score(enc.rows[s : s + batch], ro)[1])
    return torch.cat(oks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-train", type=int, default=8000)
    ap.add_argument("--num-val", type=int, default=500)
    ap.add_argument("--num-test", type=int, default=1000)
    ap.add_argument("--distill-steps", type=int, default=1500)
    ap.add_argument("--distill-lr", type=float, default=2e-3)
    ap.add_argument("--distill-noise", type=float, default=0.05)
    ap.add_argument("--dlr-steps", type=int, default=150)
    ap.add_argument("--dlr-lr", type=float, default=1e-4,
                    help="1e-4: 3 seeds +5.3 pts over own thoughts; 3e-4 (the first runs) crashed early, +1.3")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=0.1, help="initial sigma of the Gaussian head (x thought RMS)")
    ap.add_argument("--pg", type=float, default=1.0)
    ap.add_argument("--nce", type=float, default=0.1)
    ap.add_argument("--nll", type=float, default=1.0)
    ap.add_argument("--nce-temp", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--init-from", default=None, help="a distilled.pt of an earlier run: skip the distillation")
    ap.add_argument("--time-budget", type=float, default=660.0, help="seconds; training stops early past it")
    ns = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(ns.seed)
    t_start = time.perf_counter()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "w")

    def emit(rec: dict) -> None:
        rec = {"t": round(time.perf_counter() - t_start, 1), **rec}
        print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()

    task = suite_tasks()["chain_sum"]
    model = LatentModel.from_pretrained(str(model_path("chain_sum-coconut")))
    model.model.requires_grad_(False)
    model.eval()
    w0 = weights_hash(model)
    unrelated = ["9 9 9 9 ||", "<< 1 + 2 = 3 >> << 3 + 4 = 7 >> #### 7", "0 1 2 3 4 5 6 7 8 9"]
    tok = model.tokenizer
    with torch.no_grad():
        logits0 = [model.model(torch.tensor([tok(u, add_special_tokens=False)["input_ids"]])).logits.clone()
                   for u in unrelated]
    frame = CoconutFrame(model, num_thoughts=7, max_new_positions=12)

    train = load_examples(task.dataset, split="train", n=ns.num_train, seed=ns.seed, **task.dataset_kwargs)
    val = load_examples(task.dataset, split="eval", n=ns.num_val, seed=ns.seed, **task.dataset_kwargs)
    test = task.eval_examples(ns.num_test)
    check_disjoint(task, train, test)
    check_disjoint(task, val, test)
    tr, va, te = Encoded(frame, as_rows(train)), Encoded(frame, as_rows(val)), Encoded(frame, as_rows(test))
    scale = float(tr.thoughts.pow(2).mean().sqrt())
    emit({"phase": "data", "train": len(train), "val": len(val), "test": len(test), "thought_rms": scale,
          "main_own_train": float(tr.own_ok.mean()), "main_own_val": float(va.own_ok.mean()),
          "main_own_test": float(te.own_ok.mean())})

    asst = ChainAssistant(model.hidden_size, 7, width=ns.width, layers=ns.layers, max_prompt=tr.ids.shape[1],
                          init_std=ns.sigma, thought_scale=scale)
    emit({"assistant_params": asst.num_parameters(),
          "main_params": sum(p.numel() for p in model.model.parameters())})

    # ---- phase 1: distillation of the main model's own thoughts
    gen = torch.Generator().manual_seed(ns.seed)
    opt = torch.optim.AdamW([p for n, p in asst.named_parameters() if n != "log_std"], lr=ns.distill_lr,
                            weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, ns.distill_lr, total_steps=max(ns.distill_steps, 1),
                                                pct_start=0.05)
    asst.train()
    if ns.init_from:
        asst.load_state_dict(torch.load(ns.init_from))
        ns.distill_steps = 0
        emit({"phase": "distill", "loaded": ns.init_from})
    for step in range(1, ns.distill_steps + 1):
        idx = torch.randint(0, len(tr.rows), (128,), generator=gen)
        loss = distill_loss(asst, tr.states[idx], tr.mask[idx], tr.thoughts[idx], ns.distill_noise, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(asst.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == ns.distill_steps:
            ok = accuracy(frame, va, chains_of(asst, va))
            asst.train()
            emit({"phase": "distill", "step": step, "mse": loss.item(), "val_acc": float(ok.mean())})
    distilled = copy.deepcopy(asst.state_dict())
    torch.save(distilled, out / "distilled.pt")
    t_distill = time.perf_counter() - t_start

    # ---- phase 2: DLR
    opt = torch.optim.Adam([p for p in asst.parameters() if p.requires_grad], lr=ns.dlr_lr)
    best = (float(accuracy(frame, va, chains_of(asst, va)).mean()), 0, copy.deepcopy(asst.state_dict()))
    emit({"phase": "dlr", "step": 0, "val_acc": best[0]})
    main_tokens_dlr = 0
    flops_asst0 = asst.flops
    frame.main_tokens = 0
    curve = []
    for step in range(1, ns.dlr_steps + 1):
        if time.perf_counter() - t_start > ns.time_budget:
            emit({"phase": "dlr", "stopped": "time budget", "step": step - 1})
            break
        pidx = torch.randint(0, len(tr.rows), (ns.prompts,), generator=gen)
        ridx = pidx.repeat_interleave(ns.K)
        rows = [tr.rows[int(i)] for i in ridx]
        ids, mask, states = tr.ids[ridx], tr.mask[ridx], tr.states[ridx]
        asst.eval()
        with torch.no_grad():
            z, _ = asst.sample(states, mask, gen)
        ro = frame.decode(ids, mask, z)
        _, rewards = frame.score(rows, ro)
        asst.train()
        loss, m = dlr_chain_loss(asst, frame, ids, mask, states, z, rewards, ro, ns.K, pg_coef=ns.pg,
                                 contrastive_coef=ns.nce, contrastive_temperature=ns.nce_temp, nll_coef=ns.nll)
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(asst.parameters(), 1.0)
        opt.step()
        r = rewards.view(-1, ns.K)
        rec = {"phase": "dlr", "step": step, "reward": float(rewards.mean()), "grad_norm": float(gn),
               "frac_reward_zero_std": float((r.std(1) == 0).float().mean()),
               "sigma_rel": float(asst.log_std.exp().mean()), **m}
        curve.append(rec)
        if step % ns.eval_every == 0 or step == ns.dlr_steps:
            acc = float(accuracy(frame, va, chains_of(asst, va)).mean())
            rec["val_acc"] = acc
            if acc > best[0]:
                best = (acc, step, copy.deepcopy(asst.state_dict()))
        if step % 5 == 0 or "val_acc" in rec:
            emit(rec)
    main_tokens_dlr = frame.main_tokens
    dlr_flops = {"main_forward_flops": 2 * 529920 * main_tokens_dlr, "assistant_flops": asst.flops - flops_asst0}

    # ---- phase 3: test (paired, same problems)
    final_state = copy.deepcopy(asst.state_dict())
    res: dict = {"args": vars(ns), "best_val": {"acc": best[0], "step": best[1]}, "thought_rms": scale,
                 "assistant_params": asst.num_parameters(), "dlr_compute": dlr_flops,
                 "main_own_val": float(va.own_ok.mean())}
    own = te.own_ok
    n = own.numel()
    res["test_main_own"] = {"acc": float(own.mean()), "se": se(float(own.mean()), n), "n": n}
    # context: the main model with zeroed thoughts (no assistant, no own thoughts) on the same problems
    zero = accuracy(frame, te, torch.zeros_like(te.thoughts))
    res["test_main_zero_thoughts"] = {"acc": float(zero.mean()), "se": se(float(zero.mean()), n), "n": n,
                                      "minus_main_own": paired(zero, own)}
    variants = {"distilled": distilled, "dlr_best_val": best[2], "dlr_last": final_state}
    oks = {}
    for name, sd in variants.items():
        asst.load_state_dict(sd)
        ch = chains_of(asst, te)
        ok = accuracy(frame, te, ch)
        oks[name] = ok
        res[f"test_{name}"] = {"acc": float(ok.mean()), "se": se(float(ok.mean()), n), "n": n,
                               "minus_main_own": paired(ok, own)}
        if name in ("distilled", "dlr_best_val"):
            dep = thought_dependence(model, te.rows, operator=FixedChainOperator(ch, frame.latent_id),
                                     schedule=frame.schedule(), max_new_positions=frame.max_new, batch_size=n,
                                     prompt_text=frame.prompt_text, seed=ns.seed)
            res[f"swap_{name}"] = dep.to_dict()
    res["test_dlr_best_minus_distilled"] = paired(oks["dlr_best_val"], oks["distilled"])
    # ---- the frozen main model
    with torch.no_grad():
        logits1 = [model.model(torch.tensor([tok(u, add_special_tokens=False)["input_ids"]])).logits for u in unrelated]
    res["main_weights_bit_identical"] = weights_hash(model) == w0
    res["main_unrelated_logits_max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(logits0, logits1))
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["distill_wall_s"] = round(t_distill, 1)
    torch.save(best[2], out / "assistant_best_val.pt")
    (out / "result.json").write_text(json.dumps(res, indent=1))
    (out / "curve.json").write_text(json.dumps(curve))
    print(json.dumps({k: v for k, v in res.items() if k != "args"}, indent=1))


if __name__ == "__main__":
    main()
