"""LoRA (peft) for every method: only adapters, latent-token rows and side modules train; the base weights stay
bit-identical; the KL reference (adapter disabled) is exactly the base model; save -> resume reproduces the run;
adapter checkpoints reload standalone and merge for export."""

import copy
from pathlib import Path

import pytest
import torch

from latentrl.config import ConfigError, GRPOConfig, load_config
from latentrl.data import make_examples, task_vocabulary
from latentrl.methods import METHODS, get_method
from latentrl.model import LatentModel
from latentrl.testing import char_sum_reward, tiny_chain_sum_model, tiny_latent_model

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_KEYS = ("lora_A", "lora_B", "trainable_tokens_delta")




def examples(n=8):
    return make_examples("chain_sum", n, seed=0, length=3)


#: the two DLR readings' assistants, shrunk to a tiny main model
DLR_TINY = {"dlr_prefix": {"num_latent_steps": 3, "latent_dim": 4, "assistant_hidden_size": 16},
            "dlr": {"num_latent_steps": 3, "assistant_hidden_size": 16, "assistant_heads": 2, "assistant_ffn": 32,
                    "distill_steps": 2, "distill_examples": 4, "distill_batch_size": 4}}
DLR_METHODS = tuple(DLR_TINY)


def lora_config(method, out, **over):
    """The method's CPU preset, shrunk to a tiny model, with LoRA on (and a KL term where the method allows one)."""
    kw = dict(output_dir=str(out), model_name_or_path="tiny", max_steps=2, save_steps=1, save_total_limit=None,
              per_device_train_batch_size=4, gradient_accumulation_steps=1, num_generations=2,
              max_completion_length=10, learning_rate=1e-2, report_to=["none"], reward_weights=None,
              dynamic_sampling=False, lora={"enabled": True, "r": 4, "alpha": 8})
    kw["beta"] = 0.0 if method in DLR_METHODS else 0.05
    if method == "latent_grpo":  # a random tiny model never ends its completion: keep truncated ones in the loss
        kw["latent_grpo"] = {"invalid_sample_masking": False}
        kw["latent"] = {"max_latent_steps": 4}  # and it never writes '####': cap the latent span
    if method in DLR_METHODS:
        kw["dlr"] = DLR_TINY[method]
    kw.update(over)
    cfg = load_config(GRPOConfig, ROOT / "configs" / "cpu" / f"{method}.yaml").to_dict()
    for k, v in kw.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    return GRPOConfig(**cfg)


def lora_trainer(method, out, lm=None, **over):
    cfg = lora_config(method, out, **over)
    return get_method(method).trainer_class(cfg, lm or tiny_chain_sum_model(), examples(), reward_funcs=[char_sum_reward])


def trainable_state(t):
    """Every trained tensor: the peft adapter's trainable parameters and the side modules."""
    out = {f"lm.{n}": p.detach().clone() for n, p in t.model.model.named_parameters() if p.requires_grad}
    out.update({f"side.{k}": v.detach().clone() for k, v in t.model.side_modules.state_dict().items()})
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_lora_trains_only_adapters_and_side_modules_and_resumes_exactly(tmp_path, method, monkeypatch):
    lm = tiny_chain_sum_model()
    base = copy.deepcopy(lm)  # the model before any adapter: what the KL reference must equal
    t = lora_trainer(method, tmp_path / "a", lm)
    assert t.model.is_peft
    frozen = {n: p.detach().clone() for n, p in t.model.model.named_parameters() if not p.requires_grad}
    lm_trainable = {n: p for n, p in t.model.model.named_parameters() if p.requires_grad}
    if method in DLR_METHODS:  # DLR keeps its main model frozen, adapters included
        assert lm_trainable == {}
    else:
        assert lm_trainable and all(any(k in n for k in ADAPTER_KEYS) for n in lm_trainable), sorted(lm_trainable)
    # the latent-token rows train when the model has the latent tokens
    assert any("trainable_tokens_delta" in n for n, _ in t.model.model.named_parameters())
    in_optimizer = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    side = {id(p) for p in t.model.side_modules.parameters() if p.requires_grad}
    left_out = (side | {id(p) for p in lm_trainable.values()}) - in_optimizer
    assert in_optimizer <= side | {id(p) for p in lm_trainable.values()}
    if method == "latent_grpo":  # its freeze_embeddings keeps the embedding layer (here: the latent rows) frozen
        assert left_out == {id(p) for n, p in lm_trainable.items() if "trainable_tokens_delta" in n}
    else:
        assert left_out == set()
    assert t.ref_model is (t.model if t.args.beta > 0 else None)  # no deepcopy of the model under LoRA
    before = trainable_state(t)

    t.train()  # 2 steps, a checkpoint after each

    for n, p in t.model.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"base weight {n} changed"
    after = trainable_state(t)
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    if method not in DLR_METHODS:
        assert any("lora_B" in k for k in moved), moved
    if method in ("dlr", "dlr_prefix", "hrpo", "latent_rl"):
        assert any(k.startswith("side.") for k in moved), moved
    if method in ("coconut_grpo", "latent_rl"):  # <|start-latent|> ends every prompt: its row trains
        assert any("trainable_tokens_delta" in k for k in moved), moved

    if t.args.beta > 0:  # reference log-probs: adapter disabled == the untouched base model, exactly
        # the same scoring code for both (a wrapped head takes the autograd path, a plain one the buffer path)
        monkeypatch.setattr("latentrl.replay.fused_head_weight", lambda head, h: None)
        monkeypatch.setattr("latentrl.head_logprobs.fused_head_weight", lambda head, h: None)
        batch = t.generate_and_score(t.rows[:2])
        with t.reference_context():
            ref = t.method.reference_logprobs(t.ctx, batch)
        t.ctx.ref_model = base  # the trainer's ref_model is the context's
        expected = t.method.reference_logprobs(t.ctx, batch)
        t.ctx.ref_model = t.model
        assert torch.equal(ref, expected)
        policy = t.replay_in_chunks(t.model, batch.rollout)
        assert not torch.equal(policy, ref)  # the adapter did change the policy

    resumed = lora_trainer(method, tmp_path / "a")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
    assert resumed.global_step == 2
    again = trainable_state(resumed)
    assert again.keys() == after.keys()
    for k in after:
        assert torch.equal(again[k], after[k]), k


def logits(lm, ids):
    with torch.no_grad():
        return lm.forward_embeds(lm.embed(ids))[0]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # tied and untied LM head
def test_adapter_checkpoint_reloads_standalone_and_merges_for_export(tmp_path, arch):
    tiny_latent_model(arch, task_vocabulary("chain_sum"), seed=0, hidden=32).save_pretrained(tmp_path / "base")
    t = lora_trainer("coconut_grpo", tmp_path / "run", LatentModel.from_pretrained(tmp_path / "base"), max_steps=1)
    t.train()
    trained = t.model
    ckpt = tmp_path / "run" / "checkpoint-1"
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "config.json").exists()  # adapter only
    ids = trained.tokenizer(["1 2 || <|start-latent|> <|latent|> <|end-latent|> 3"], return_tensors="pt")["input_ids"]

    loaded = LatentModel.from_pretrained(ckpt)  # the recorded base model + the adapter
    assert loaded.is_peft and loaded.latent_ids == trained.latent_ids
    assert torch.equal(logits(loaded, ids), logits(trained, ids))
    with torch.no_grad():  # the head module the chunked scorers take is the one the model applies, through peft
        out = loaded.model(input_ids=ids, output_hidden_states=True)
        torch.testing.assert_close(loaded.output_head(out.hidden_states[-1]), out.logits)
    base = LatentModel.from_pretrained(tmp_path / "base")
    with loaded.adapter_disabled():
        assert torch.equal(logits(loaded, ids), logits(base, ids))
    assert not torch.equal(logits(loaded, ids), logits(base, ids))

    merged = loaded.merge_and_unload()
    assert not merged.is_peft
    torch.testing.assert_close(logits(merged, ids), logits(trained, ids), atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").exists()
    again = LatentModel.from_pretrained(tmp_path / "merged")
    assert not again.is_peft
    torch.testing.assert_close(logits(again, ids), logits(trained, ids), atol=1e-5, rtol=1e-5)


def test_an_adapter_records_a_base_it_can_be_loaded_with_from_anywhere(tmp_path, monkeypatch):
    """peft records the base as typed: a folder relative to where training ran broke the checkpoint elsewhere (or
    loaded another folder of that name). Saved, a local base is absolute and a shipped base its name; a checkpoint
    that names a shipped base by another install's path loads this install's; a base that is not here is an error
    naming the field."""
    import json

    monkeypatch.chdir(tmp_path)
    tiny_chain_sum_model().save_pretrained(tmp_path / "my-model")
    t = lora_trainer("grpo", tmp_path / "run", LatentModel.from_pretrained("my-model"), max_steps=1)
    t.train()
    config = tmp_path / "run" / "checkpoint-1" / "adapter_config.json"
    assert json.loads(config.read_text())["base_model_name_or_path"] == str((tmp_path / "my-model").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert LatentModel.from_pretrained(tmp_path / "run" / "checkpoint-1").is_peft

    shipped = LatentModel.from_pretrained("chain_sum-cot")
    shipped.apply_lora(lora_config("grpo", tmp_path).lora)
    shipped.save_pretrained(tmp_path / "on_shipped")
    config = tmp_path / "on_shipped" / "adapter_config.json"
    assert json.loads(config.read_text())["base_model_name_or_path"] == "chain_sum-cot"
    other_install = "/opt/other/site-packages/latentrl/assets/models/chain_sum-cot"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": other_install}))
    assert LatentModel.from_pretrained(tmp_path / "on_shipped").is_peft
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "./gone"}))
    with pytest.raises(FileNotFoundError, match=r"needs its base model './gone' \(adapter_config.json's "):
        LatentModel.from_pretrained(tmp_path / "on_shipped")


def test_a_new_run_from_a_lora_checkpoint_starts_from_its_merged_weights_and_trains_as_lora_says(tmp_path, capsys):
    """`model_name_or_path=RUN/checkpoint-N` of a LoRA run (the route the resume errors name): the adapter is merged
    into its base, the new run's start, and `lora.*` decide how it trains (the adapter used to be kept whatever they
    said, with the pre-LoRA base as KL reference). A trainer handed an adapter with lora.enabled=false refuses."""
    from latentrl.cli import main
    from latentrl.config import ConfigError

    tiny_chain_sum_model().save_pretrained(tmp_path / "base")

    def train(out, *extra):
        return main(["train", "--config", str(ROOT / "configs/cpu/grpo.yaml"), f"output_dir={out}", "max_steps=1",
                     "dataset=chain_sum", "num_train_examples=8", "per_device_train_batch_size=8",
                     "num_generations=4", "max_completion_length=8", "save_steps=1", "report_to=[jsonl]",
                     "learning_rate=0.05", *extra])

    assert train(tmp_path / "a", f"model_name_or_path={tmp_path / 'base'}", "lora.enabled=true", "lora.r=4") == 0
    start = tmp_path / "a" / "checkpoint-1"
    ids = torch.tensor([[3, 4, 5, 6]])
    merged = logits(LatentModel.from_pretrained(start).merge_and_unload(), ids)
    capsys.readouterr()
    assert train(tmp_path / "full", f"model_name_or_path={start}", "lora.enabled=false", "beta=0.1") == 0
    assert "is a LoRA checkpoint: its adapter is merged into its base" in capsys.readouterr().err
    full = tmp_path / "full" / "checkpoint-1"
    assert (full / "config.json").is_file() and not (full / "adapter_config.json").exists()  # every weight trained
    # with max_steps=1 the preset's warmup makes step 1 a zero-lr step (HF's rule): the checkpoint is the start
    torch.testing.assert_close(logits(LatentModel.from_pretrained(full), ids), merged)
    assert train(tmp_path / "r2", f"model_name_or_path={start}", "lora.enabled=true", "lora.r=2") == 0
    import json

    assert json.loads((tmp_path / "r2" / "checkpoint-1" / "adapter_config.json").read_text())["r"] == 2
    with pytest.raises(ConfigError, match="carries a LoRA adapter but lora.enabled is false"):
        lora_trainer("grpo", tmp_path / "api", LatentModel.from_pretrained(start), lora={"enabled": False})


def test_resuming_across_lora_and_full_fine_tuning_is_a_clear_error(tmp_path):
    lora = lora_trainer("grpo", tmp_path / "lora", max_steps=1)
    lora.train()
    full = lora_trainer("grpo", tmp_path / "full", max_steps=1, lora={"enabled": False})
    full.train()
    assert not full.model.is_peft and full.ref_model is not full.model  # full fine-tuning: a frozen copy
    with pytest.raises(FileNotFoundError, match="lora.enabled=true"):
        tiny_chain_sum_model().load_weights(tmp_path / "lora" / "checkpoint-1")
    with pytest.raises(FileNotFoundError, match="lora.enabled=false"):
        lora.model.load_weights(tmp_path / "full" / "checkpoint-1")


def test_lora_options_reach_peft(tmp_path):
    t = lora_trainer("grpo", tmp_path, lora={"enabled": True, "r": 2, "alpha": 6, "target_modules": ["q_proj", "v_proj"],
                                             "modules_to_save": ["lm_head"], "train_latent_tokens": False})
    cfg = t.model.model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, set(cfg.target_modules)) == (2, 6, {"q_proj", "v_proj"})
    names = [n for n, p in t.model.model.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A" in n for n in names) and not any("k_proj.lora" in n for n in names)
    assert not any("trainable_tokens" in n for n in names)
    with pytest.raises(ValueError, match="LoRA could not wrap"):
        lora_trainer("grpo", tmp_path, lora={"enabled": True, "target_modules": ["no_such_proj"]})


@pytest.mark.parametrize("module", ["lm_head", "embed_tokens"])
def test_a_whole_embedding_or_head_in_modules_to_save_trains_the_latent_rows_with_it(tmp_path, module):
    """`modules_to_save=[lm_head]` (the help's example) on a model with latent tokens: peft cannot also put its
    trainable-token layer on that module (it raised at the first rollout), so the whole matrix trains, latent rows
    included, and the run goes on."""
    lm = tiny_chain_sum_model()
    lm.add_latent_tokens()
    t = lora_trainer("coconut_grpo", tmp_path, lm=lm, max_steps=1,
                     lora={"enabled": True, "r": 2, "alpha": 4, "modules_to_save": [module]})
    names = [n for n, p in t.model.model.named_parameters() if p.requires_grad]
    assert any(f"{module}.modules_to_save" in n for n in names) and not any("trainable_tokens" in n for n in names)
    t.train()
    assert (tmp_path / "checkpoint-1").is_dir()


def test_paper_presets():
    hrpo = load_config(GRPOConfig, ROOT / "configs" / "hrpo_qwen2.5-1.5b_gsm8k.yaml")  # the paper trains LoRA
    assert hrpo.lora.enabled and (hrpo.lora.r, hrpo.lora.alpha) == (32, 64.0) and hrpo.prompt_format == "chat"
    for name in ("coconut_grpo_qwen2.5-1.5b", "latent_rl_qwen2.5-1.5b", "latent_grpo_llama3.2-1b_gsm8k",
                 "lepo_qwen2.5-3b", "dlr_prefix_qwen2.5-1.5b", "dlr_gpt2_gsm8k"):  # full fine-tuning (or a frozen main model) as published
        cfg = load_config(GRPOConfig, ROOT / "configs" / f"{name}.yaml")
        assert not cfg.lora.enabled and not cfg.gradient_checkpointing
        # Instruct checkpoints get their chat template (Latent-GRPO's verl pipeline renders it); the rest raw text
        assert cfg.prompt_format == ("chat" if name.startswith("latent_grpo") else "raw"), name


def test_lora_options_from_overrides_and_bad_values():
    cfg = load_config(GRPOConfig, None, ["model_name_or_path=m", "lora.enabled=true", "lora.r=8",
                                         "lora.target_modules=q_proj,v_proj", "gradient_checkpointing=true"])
    assert cfg.lora.enabled and cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.gradient_checkpointing
    with pytest.raises(ConfigError, match="all-linear"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "lora.target_modules=all-linear,q_proj"])
    with pytest.raises(ConfigError, match="lora.r"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "lora.r=0"])
