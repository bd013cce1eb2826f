"""`inspect_thoughts` / `latentrl inspect`: every reported number recomputed by hand from the model's weights."""

import json

import pytest
import torch
import torch.nn.functional as F

from latentrl.cli import main
from latentrl.config import GRPOConfig, config_to_dict, load_config
from latentrl.data import task_vocabulary
from latentrl.methods import Method
from latentrl.methods.hrpo.operator import GATE_NAME
from latentrl.testing import tiny_latent_model
from latentrl.thought_inspection import NoLatentThoughtsError, inspect_thoughts, plot_heatmap, render_table

PROMPTS = ["3 5 2 7 ||", "1 ||"]


def tiny(arch="qwen2"):
    return tiny_latent_model(arch, task_vocabulary("chain_sum"), seed=0)


def cfg(method="grpo", *overrides):
    return load_config(GRPOConfig, None, ["model_name_or_path=tiny", f"method={method}", "max_completion_length=6",
                                          *overrides])


def prompt_embeds(lm, text):
    ids = torch.tensor(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    return lm.embed(ids)


def next_logits(lm, embeds):
    """Logits after `embeds` by one full forward without any cache (the reference for the KV-cached rollout)."""
    logits, _, _ = lm.forward_embeds(embeds[None])
    return logits[0, -1].float()


def check_readings(lm, row, k):
    """LM-head top-k, cosine top-1 and norm of each reported thought, recomputed from the weights."""
    W = lm.model.get_output_embeddings().weight.float()
    E = lm.embedding_matrix.float()
    for t, v in zip(row.thoughts, row.vectors):
        probs = (v @ W.T).softmax(-1)
        top = torch.topk(probs, k)
        # scores and ids are checked separately: the three latent tokens' rows tie with `<<`'s, so ids may swap
        got = torch.tensor([s.score for s in t.lm_head])
        torch.testing.assert_close(got, top.values, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(probs[[s.token_id for s in t.lm_head]], got, atol=1e-6, rtol=1e-5)
        cos = (E / E.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ (v / v.norm())  # the pad row is 0
        assert t.cosine[0].score == pytest.approx(float(cos.max()), abs=1e-5)  # = argmax of normalised dots
        assert float(cos[t.cosine[0].token_id]) == pytest.approx(float(cos.max()), abs=1e-5)
        assert t.norm == pytest.approx(float(v.norm()), rel=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # tied and untied LM head
@torch.no_grad()
def test_soft_mixture_thoughts_match_a_full_recompute(arch):
    lm, k = tiny(arch), 4
    c = cfg("grpo", "latent.operator=soft_mixture", "latent.num_latent_steps=3", "latent.top_k=5")
    res = inspect_thoughts(lm, Method(), PROMPTS, config=c, top_k=k)
    assert res.operator == "soft_mixture" and res.views == ("lm_head", "cosine", "mixture")
    E = lm.embedding_matrix.float()
    for text, row in zip(PROMPTS, res.rows):
        assert [t.position for t in row.thoughts] == [0, 1, 2]
        embeds = prompt_embeds(lm, text)
        for j, t in enumerate(row.thoughts):  # rebuild each thought from the previous position's logits
            top = torch.topk(next_logits(lm, embeds), 5)
            w = top.values.softmax(-1)
            thought = w @ E[top.indices]
            torch.testing.assert_close(row.vectors[j], thought, atol=1e-5, rtol=1e-4)
            assert [s.token_id for s in t.mixture] == top.indices[:k].tolist()
            torch.testing.assert_close(torch.tensor([s.score for s in t.mixture]), w[:k], atol=1e-6, rtol=1e-5)
            assert t.recorded_id == int(top.indices[0])
            embeds = torch.cat([embeds, thought[None]])
        check_readings(lm, row, k)


@torch.no_grad()
def test_hrpo_thought_gate_and_hidden_part_by_hand():
    lm, k = tiny(), 3
    res = inspect_thoughts(lm, "hrpo", PROMPTS, config=cfg("hrpo", "latent.answer_delimiter=####"), top_k=k)
    gate = lm.side_modules[GATE_NAME]
    E = lm.embedding_matrix.float()
    ro = res.rollout
    for b, row in enumerate(res.rows):
        assert len(row.thoughts) == int((ro.latent_mask[b] & ro.completion_mask[b]).sum()) > 0
        for t, v in zip(row.thoughts, row.vectors):
            h = ro.payload["hidden"][b, t.position].float()
            e = E[t.recorded_id]
            a = torch.exp(-gate.c * F.softplus(gate.Lambda) * torch.sigmoid(gate.gate_r(e)))
            i = torch.sigmoid(gate.gate_i(e))
            torch.testing.assert_close(v, a * e + torch.sqrt(1 - a**2 + 1e-8) * (i * h), atol=1e-6, rtol=1e-5)
            assert t.gate["embeds_ratio"] == pytest.approx(float(a.mean()), rel=1e-5)
            assert t.gate["hidden_ratio"] == pytest.approx(float(torch.sqrt(1 - a**2 + 1e-8).mean()), rel=1e-5)
            cos_h = F.normalize(E, dim=-1) @ F.normalize(h, dim=0)
            got = torch.tensor([s.score for s in t.hidden_part])  # (scores, not ids: the latent rows tie with <<)
            torch.testing.assert_close(got, torch.topk(cos_h, k).values, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(cos_h[[s.token_id for s in t.hidden_part]], got, atol=1e-5, rtol=1e-4)
            assert t.mixture is None
        check_readings(lm, row, k)
    assert "hidden_part" in res.views and "mixture" not in res.views


@pytest.mark.parametrize("method,overrides", [
    ("lepo", ["latent.operator=gumbel_softmax", "latent.num_latent_steps=3", "latent.top_k=6"]),
    ("latent_grpo", ["latent.operator=gumbel_topk", "latent.end_of_thinking_token=####", "latent.max_latent_steps=4",
                     "latent.top_k=6", "latent.gumbel_tau=0.7"]),
])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@torch.no_grad()
def test_gumbel_mixture_weights_are_the_payloads(method, overrides, temperature):
    lm, k = tiny(), 4
    res = inspect_thoughts(lm, method, PROMPTS, config=cfg(method, *overrides), top_k=k, temperature=temperature,
                           seed=3)
    ro = res.rollout
    for b, row in enumerate(res.rows):
        assert row.thoughts
        for t in row.thoughts:
            ids = ro.payload["ids"][b, t.position]
            if "weights" in ro.payload:
                w = ro.payload["weights"][b, t.position].float()
            else:
                w = (ro.payload["scores"][b, t.position].float() / 0.7).softmax(-1)
            order = torch.topk(w, k)
            keep = order.values > 0  # filtered-out tokens (weight exactly 0) are not listed
            assert [s.token_id for s in t.mixture] == ids[order.indices[keep]].tolist()
            torch.testing.assert_close(torch.tensor([s.score for s in t.mixture]), order.values[keep], atol=1e-6,
                                       rtol=1e-5)
        check_readings(lm, row, k)


@torch.no_grad()
def test_coconut_thought_is_the_hidden_state_and_its_lm_head_reading_the_next_token_distribution():
    lm = tiny()
    c = cfg("coconut_grpo", "latent.operator=hidden_state", "latent.num_latent_steps=2")
    res = inspect_thoughts(lm, "coconut_grpo", PROMPTS, config=c, top_k=3)
    for text, row in zip(PROMPTS, res.rows):
        ids = torch.tensor(lm.tokenizer(text + lm.latent_tokens.start, add_special_tokens=False)["input_ids"])
        logits, hidden, _ = lm.forward_embeds(lm.embed(ids)[None])
        torch.testing.assert_close(row.vectors[0], hidden[0, -1].float(), atol=1e-5, rtol=1e-4)
        top = torch.topk(logits[0, -1].float().softmax(-1), 3)
        assert [s.token_id for s in row.thoughts[0].lm_head] == top.indices.tolist()
        assert row.thoughts[0].mixture is None and row.thoughts[0].gate is None


def test_discrete_only_method_is_refused_clearly():
    with pytest.raises(NoLatentThoughtsError, match="decodes tokens only"):
        inspect_thoughts(tiny(), "grpo", PROMPTS, config=cfg("grpo"))


def test_renderers_show_every_view(tmp_path, capsys):
    res = inspect_thoughts(tiny(), "hrpo", PROMPTS, config=cfg("hrpo"), top_k=2)
    render_table(res)
    out = capsys.readouterr().out
    assert "hrpo" in out and PROMPTS[0] in out and "gate" in out
    assert res.rows[0].thoughts[0].lm_head[0].token in out
    path = plot_heatmap(res, tmp_path / "h.png", max_positions=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown view"):
        plot_heatmap(res, tmp_path / "x.png", views=["colour"])


# ------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture
def run_dir(tmp_path):
    """A fake `latentrl train` run folder: run_config.json (LEPO, 2 latent steps) and checkpoint-1."""
    run = tmp_path / "run"
    tiny().save_pretrained(run / "checkpoint-1")
    c = cfg("lepo", "latent.operator=gumbel_softmax", "latent.num_latent_steps=2", "latent.top_k=5")
    (run / "run_config.json").write_text(json.dumps(config_to_dict(c)))
    return run


def test_cli_writes_the_image_and_prints_the_table(run_dir, tmp_path, capsys):
    img = tmp_path / "img" / "inspect.png"
    rc = main(["inspect", "--model", str(run_dir / "checkpoint-1"), "--top-k", "3", "--out", str(img),
               "--prompts", *PROMPTS])
    assert rc == 0
    out = capsys.readouterr().out
    assert "run_config.json" in out and "lepo" in out and "mixture weights" in out and PROMPTS[1] in out
    assert img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_method_and_dataset_options(run_dir, capsys):
    rc = main(["inspect", "--model", str(run_dir / "checkpoint-1"), "--method", "hrpo", "--config",
               "configs/cpu/hrpo.yaml", "--dataset", "chain_sum", "--num", "1", "--max-new", "4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "hrpo_gate" in out and "reference" in out


@pytest.mark.parametrize("args,message", [
    (["--model", "no/such/checkpoint", "--method", "hrpo"], "no checkpoint"),
    (["--model", "chain_sum-cot", "--method", "nope"], "unknown method"),
    (["--model", "chain_sum-cot", "--method", "grpo"], "decodes tokens only"),
    (["--model", "chain_sum-cot"], "--method"),
    (["--model", "chain_sum-cot", "--method", "hrpo"], "--prompts"),
])
def test_cli_errors_are_one_line(args, message, capsys):
    prompts = [] if message in ("--prompts",) else ["--prompts", "1 ||"]
    assert main(["inspect", *args, *prompts]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
