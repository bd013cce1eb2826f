import pytest
import torch
from torch import nn

from latentrl.model import LatentModel


def test_latent_tokens_added_and_initialised_from_init_token(tiny):
    ids = tiny.latent_ids
    assert len({ids.start, ids.latent, ids.end}) == 3
    src = tiny.tokenizer.convert_tokens_to_ids("<<")
    E = tiny.embedding_matrix
    for i in (ids.start, ids.latent, ids.end):
        assert torch.equal(E[i], E[src])
    assert tiny.tokenizer.decode([ids.latent]) == "<|latent|>"
    assert E.shape[0] >= len(tiny.tokenizer)


def test_forward_embeds_matches_hf_forward(tiny, prompts):
    ids, mask = prompts
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    logits, hidden, _ = tiny.forward_embeds(tiny.embed(ids), attention_mask=mask.long(), position_ids=pos)
    ref = tiny.model(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits
    assert torch.allclose(logits[mask], ref[mask], atol=1e-5)
    assert hidden.shape == (*ids.shape, tiny.hidden_size)


def test_save_and_load_round_trip(tiny, tmp_path):
    tiny.attach_side_module("probe", nn.Linear(tiny.hidden_size, 2))
    tiny.save_pretrained(tmp_path / "ckpt")
    back = LatentModel.from_pretrained(tmp_path / "ckpt")
    assert back.latent_ids == tiny.latent_ids
    for (n, p), (_, q) in zip(tiny.model.state_dict().items(), back.model.state_dict().items()):
        assert torch.equal(p, q), n
    probe = back.attach_side_module("probe", nn.Linear(back.hidden_size, 2))
    assert torch.equal(probe.weight, tiny.side_modules["probe"].weight)
    assert back.tokenizer("1 2 ||")["input_ids"] == tiny.tokenizer("1 2 ||")["input_ids"]


def test_a_loaded_side_module_survives_a_save_before_it_is_attached(tiny, tmp_path):
    """Loading a checkpoint only to export it (no method attached its gate / value head) keeps the trained side
    modules in the new folder; an attached module's current weights win over the loaded ones."""
    from safetensors.torch import load_file

    from latentrl.model import SIDE_MODULES_FILE

    tiny.attach_side_module("probe", nn.Linear(tiny.hidden_size, 2))
    tiny.attach_side_module("head", nn.Linear(tiny.hidden_size, 1))
    tiny.save_pretrained(tmp_path / "ckpt")
    LatentModel.from_pretrained(tmp_path / "ckpt").save_pretrained(tmp_path / "export")
    saved, exported = (load_file(str(tmp_path / d / SIDE_MODULES_FILE)) for d in ("ckpt", "export"))
    assert saved.keys() == exported.keys() and all(torch.equal(saved[k], exported[k]) for k in saved)
    back = LatentModel.from_pretrained(tmp_path / "ckpt")
    head = back.attach_side_module("head", nn.Linear(back.hidden_size, 1))
    with torch.no_grad():
        head.weight.add_(1.0)
    back.save_pretrained(tmp_path / "again")
    again = load_file(str(tmp_path / "again" / SIDE_MODULES_FILE))
    assert torch.equal(again["head.weight"], head.weight) and torch.equal(again["probe.weight"], saved["probe.weight"])


def test_resuming_into_a_model_with_other_side_modules_keeps_both(tiny, tmp_path):
    """A checkpoint that carries another method's module (a value-head run started from a gated checkpoint) loads
    into a model with only its own attached; the other travels on to the next save."""
    from safetensors.torch import load_file

    from latentrl.model import SIDE_MODULES_FILE

    tiny.attach_side_module("gate", nn.Linear(tiny.hidden_size, 2))
    tiny.attach_side_module("head", nn.Linear(tiny.hidden_size, 1))
    tiny.save_pretrained(tmp_path / "ckpt")
    fresh = LatentModel.from_pretrained(tmp_path / "ckpt")
    fresh._pending_side_state = None  # as a model built from scratch, then resumed
    head = fresh.attach_side_module("head", nn.Linear(fresh.hidden_size, 1))
    fresh.load_weights(tmp_path / "ckpt")
    assert torch.equal(head.weight, tiny.side_modules["head"].weight)
    fresh.save_pretrained(tmp_path / "next")
    assert torch.equal(load_file(str(tmp_path / "next" / SIDE_MODULES_FILE))["gate.weight"],
                       tiny.side_modules["gate"].weight)


def test_only_file_damage_is_called_damage(tmp_path, monkeypatch):
    """A local folder that fails to load for another reason (a missing optional package) keeps its own error."""
    def needs_flash(*a, **k):
        raise ImportError("FlashAttention2 has been toggled on, but it cannot be used")

    monkeypatch.setattr("latentrl.model.AutoModelForCausalLM.from_pretrained", needs_flash)
    with pytest.raises(ImportError, match="FlashAttention2"):
        LatentModel.from_pretrained("chain_sum-cot")


def test_missing_or_bad_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LatentModel.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        LatentModel.from_pretrained(str(tmp_path / "empty"))
    for step in (2, 10):  # a run folder: its newest checkpoint is named (by step, not by name)
        (tmp_path / "run" / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"is a run folder, not a model: .*checkpoint-10 \(the newest\)"):
        LatentModel.from_pretrained(str(tmp_path / "run"))


def test_shipped_names_load_and_missing_local_paths_never_reach_the_hub(monkeypatch, tmp_path):
    lm = LatentModel.from_pretrained("chain_sum-cot")  # a shipped model by name, from Python as from the CLI
    assert lm.model.config.num_hidden_layers >= 1 and lm.latent_ids is not None

    def no_hub(*args, **kwargs):
        raise AssertionError(f"went to the hub for {args[0]!r}")

    monkeypatch.setattr("latentrl.model.AutoModelForCausalLM.from_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    for missing in ["runs/mine/checkpoint-40", "./mine", "../mine", "~/no/such/model", "model.safetensors"]:
        with pytest.raises(FileNotFoundError, match="does not exist.*shipped model name"):
            LatentModel.from_pretrained(missing)
    (tmp_path / "runs").mkdir()  # `runs/coconut` has a hub id's shape, but `runs/` is a local folder: a path
    with pytest.raises(FileNotFoundError, match="runs/ is a local folder, so this is taken as a path"):
        LatentModel.from_pretrained("runs/coconut")
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        LatentModel.from_pretrained("/no/such/model")
    assert "is a local folder" not in str(err.value)
    for typo in ("chain_sum_cot", "chain-sum-cot"):  # a shipped name misspelt: named, not sent to the hub
        with pytest.raises(FileNotFoundError, match="did you mean 'chain_sum-cot'"):
            LatentModel.from_pretrained(typo)


def test_an_unreachable_hub_id_is_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nmore lines")

    monkeypatch.setattr("latentrl.model.AutoModelForCausalLM.from_pretrained", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match=r"not a local folder, not a shipped model .*couldn't connect"
                                                r".*HF_HUB_OFFLINE=1 skips the hub's connection retries"):
        LatentModel.from_pretrained("someorg/somemodel")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # already offline: no hint to set it
    with pytest.raises(FileNotFoundError) as err:
        LatentModel.from_pretrained("someorg/somemodel")
    assert "HF_HUB_OFFLINE" not in str(err.value)


def test_an_encoder_that_is_not_a_decoder_is_refused_clearly_and_loads_as_one(tmp_path):
    """A BERT checkpoint loads as BertLMHeadModel, which attends both ways unless is_decoder: the rollout's KV-cached
    steps then fail deep in SDPA, and replays would read later tokens. Loading names the problem and the fix; with
    is_decoder=true the same weights load and run as a causal LM."""
    import json

    from transformers import BertConfig, BertLMHeadModel

    from latentrl.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["a", "b"])
    torch.manual_seed(0)
    BertLMHeadModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"is not a causal LM.*is_decoder=true"):
        LatentModel.from_pretrained(tmp_path / "bert")
    config = tmp_path / "bert" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "is_decoder": True}))
    lm = LatentModel.from_pretrained(tmp_path / "bert")
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        full = lm.model(input_ids=ids).logits
        torch.testing.assert_close(lm.model(input_ids=ids[:, :2]).logits, full[:, :2])


@pytest.mark.parametrize("family, field, value", [("gemma2", "final_logit_softcapping", 30.0),
                                                  ("cohere", "logit_scale", 0.0625),
                                                  ("granite", "logits_scaling", 4.0)])
def test_a_model_that_transforms_its_logits_after_the_head_is_refused_clearly(family, field, value, tmp_path):
    """Gemma's soft-capping, Cohere's and Granite's logit scales happen in the model's forward after the LM head;
    the library scores lm_head(hidden), so it would silently use other log-probs. Wrapping such a model (or loading
    its folder, before the weights) names the field; with the field neutral the head's logits are the model's own."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from latentrl.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["a", "b"])
    cfg = AutoConfig.for_model(family, vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, **{field: value})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(50.0)  # logits far from 0: every transform moves them visibly
    with pytest.raises(ValueError, match=field):
        LatentModel(model, tok)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=field):
        LatentModel.from_pretrained(tmp_path / "m")
    ids = torch.tensor([[tok.bos_token_id or 0, 4, 5]])
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
        neutral = {"final_logit_softcapping": None}.get(field, 1.0)
        setattr(model.config, field, neutral)
        if hasattr(model, "logit_scale"):  # Cohere keeps its own copy of the scale
            model.logit_scale = neutral
        lm = LatentModel(model, tok)
        _, hidden, _ = lm.forward_embeds(lm.embed(ids), compute_logits=False)
        assert not torch.allclose(lm.lm_head(hidden), theirs, atol=1e-3)  # what the refusal prevents
        torch.testing.assert_close(lm.lm_head(hidden), model(input_ids=ids).logits)
