"""LatentModel: any Hugging Face causal LM + its tokenizer + the latent special tokens + small side modules.

The wrapper never patches the HF model. It reaches the two pieces every latent method needs through public
HF APIs: the decoder stack (`base_model_prefix`) that maps input embeddings to the last-layer hidden state, and
the LM head (`get_output_embeddings`). Method-specific trainable modules (HRPO's gate, a value head) live in
`side_modules` beside the LM and are saved with it.

LoRA (`apply_lora`): the HF model is wrapped by peft; the base weights stay frozen, the Coconut latent-token rows
stay trainable (peft `trainable_token_indices`), side modules stay outside peft and train in full. The KL reference
is the same model inside `adapter_disabled()`. `save_pretrained` then writes only the adapter (plus the side
modules and the base rows of the latent tokens, so a reload rebuilds the exact reference); `from_pretrained` on
such a folder loads the recorded base model and puts the adapter back; `merge_and_unload` folds it in for export.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from latentrl.assets import ADAPTER_CONFIG_FILE, MODELS_DIR, available_models, recorded_num_thoughts, resolve_model
from latentrl.packed_head import PackedHead
from latentrl.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from latentrl.config import LoraConfig

SIDE_MODULES_FILE = "latentrl_side_modules.safetensors"
LATENT_META_FILE = "latentrl_latent_tokens.json"
#: with LoRA: the frozen base model's embedding rows of the latent tokens (input, and output if untied)
BASE_LATENT_ROWS_FILE = "latentrl_base_latent_rows.safetensors"


@dataclass(frozen=True)
class LatentTokens:
    """Names of the Coconut latent special tokens (Hao et al. 2024)."""

    start: str = "<|start-latent|>"
    latent: str = "<|latent|>"
    end: str = "<|end-latent|>"

    def as_list(self) -> list[str]:
        return [self.start, self.latent, self.end]


@dataclass
class LatentIds:
    start: int
    latent: int
    end: int


LOGIT_TRANSFORMS: dict[str, float | None] = {
    "final_logit_softcapping": None,  # Gemma 2, 3, 4: logits = c * tanh(logits / c)
    "logit_scale": 1.0,  # Cohere: logits * s
    "logits_scaling": 1.0,  # Granite: logits / s
    "output_multiplier": 1.0,
}
"""Config fields with which a causal LM's forward transforms its logits after the LM head, and their neutral values."""


def check_plain_logits(config: Any) -> None:
    """Refuse a model whose logits are not its LM head's output: the library scores and samples from `lm_head(hidden)`
    (rollout, replay, SFT losses, in reused buffers at large vocabularies), so a transform applied after the head
    in the model's own forward would be silently dropped everywhere."""
    for cfg in (config, getattr(config, "text_config", None)):
        for name, neutral in LOGIT_TRANSFORMS.items():
            value = getattr(cfg, name, neutral) if cfg is not None else neutral
            if value is not None and value != neutral:
                raise ValueError(
                    f"{type(config).__name__} has {name}={value}: this model transforms its logits after the LM head, "
                    f"which latentrl does not (it scores lm_head(hidden) directly), so every log-prob would differ "
                    f"from the model's own. Set config.{name} = {neutral!r} before wrapping it to train without the "
                    f"transform (a different distribution from the released model's), or use another model.")


@torch.no_grad()
def check_causal(model: nn.Module, name: str) -> None:
    """Refuse a model whose output at a position depends on later tokens: rollouts, KV caches and every loss here
    assume a causal LM. An encoder loaded for causal LM without `is_decoder` (e.g. a BERT checkpoint) attends both
    ways, and would fail deep in attention or score garbage. One forward of three 3-token rows: the last token's
    effect on the first two positions (exactly 0 in a causal model, in any dtype) against an earlier token's
    effect on the last position."""
    if int(getattr(model.get_input_embeddings(), "num_embeddings", 0) or 0) < 3:
        return
    ids = torch.tensor([[1, 2, 1], [1, 2, 2], [1, 1, 1]], device=model.get_input_embeddings().weight.device)
    was = model.training
    model.eval()
    try:
        logits = model(input_ids=ids, use_cache=False).logits.float()
    except Exception as err:  # e.g. SDPA's shape error when a bidirectional mask meets the causal call
        raise ValueError(f"{name!r} is not a causal LM latentrl can run (a forward of 3 tokens failed: "
                         f"{str(err).splitlines()[0]}); for an encoder such as BERT set is_decoder=true in its "
                         "config.json, or use a decoder-only model") from err
    finally:
        model.train(was)
    later = float((logits[0, :2] - logits[1, :2]).abs().max())
    earlier = float((logits[0, 2] - logits[2, 2]).abs().max())
    if later > max(0.25 * earlier, 1e-6 * float(logits.abs().max())):
        raise ValueError(f"{name!r} is not a causal LM: its output at a position changes with a later token (an "
                         "encoder such as BERT without is_decoder=true in its config.json); latentrl trains "
                         "decoder-only models")


class LatentModel(nn.Module):
    """A causal LM ready for latent reasoning.

    `forward_embeds` is the one entry point the rollout engine, the replay scorer and the SFT code share: it takes
    input embeddings (so a position may hold a token embedding or a continuous thought) and returns logits and the
    last-layer hidden state (post final norm, as Coconut feeds back).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        check_plain_logits(model.config)
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
            tokenizer.pad_token = tokenizer.eos_token
        self.side_modules = nn.ModuleDict()
        self.latent_tokens: LatentTokens | None = None
        self.latent_ids: LatentIds | None = None
        #: the thought count the checkpoint was trained with, when its folder records one (`latent_init.json`;
        #: `latentrl.assets.recorded_num_thoughts`): the Coconut family's methods warn when run with another
        self.trained_num_thoughts: int | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        tokenizer: PreTrainedTokenizerBase | str | None = None,
        add_latent_tokens: bool = False,
        latent_init_token: str | None = "<<",
        torch_dtype: torch.dtype | str | None = None,
        **model_kwargs: Any,
    ) -> "LatentModel":
        """Load a causal LM and its tokenizer from a local folder, a shipped model name (`chain_sum-cot`; see
        `latentrl.assets.available_models`) or a hub id."""
        name_or_path = resolve_model_source(name_or_path)
        path = Path(name_or_path)
        if path.is_dir() and not (path / "config.json").exists() and (path / ADAPTER_CONFIG_FILE).exists():
            try:
                return cls._from_adapter(path, tokenizer=tokenizer, add_latent_tokens=add_latent_tokens,
                                         latent_init_token=latent_init_token, torch_dtype=torch_dtype, **model_kwargs)
            except Exception as err:  # a truncated adapter or a broken JSON file in it (an OSError may be the base's)
                if not _is_file_damage(err) or isinstance(err, OSError):
                    raise
                raise _damaged("LoRA folder", path, err) from err
        if path.exists() and path.is_dir() and not (path / "config.json").exists():
            checkpoints = sorted((p for p in path.glob("checkpoint-*") if p.name[11:].isdigit()),
                                 key=lambda p: int(p.name[11:]))
            if checkpoints:
                raise FileNotFoundError(f"{str(path)!r} is a run folder, not a model: name one of its checkpoints, "
                                        f"e.g. {checkpoints[-1]} (the newest)")
            raise FileNotFoundError(f"{str(path)!r} is not a Hugging Face model folder: no config.json in it")
        if torch_dtype is not None:
            model_kwargs["torch_dtype"] = torch_dtype
        if (path / "config.json").is_file():  # refuse before loading the weights, not after
            try:
                config = AutoConfig.from_pretrained(name_or_path,
                                                    trust_remote_code=model_kwargs.get("trust_remote_code", False))
            except Exception:  # a damaged config.json: the load below says so
                config = None
            if config is not None:
                check_plain_logits(config)
        if path.is_dir() and tokenizer is None and not any((path / f).exists() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"no tokenizer in {str(path)!r} (none of {', '.join(TOKENIZER_FILES)}): save it "
                                    "beside the model (tokenizer.save_pretrained), or pass tokenizer=NAME_OR_PATH")
        try:
            model, info = AutoModelForCausalLM.from_pretrained(name_or_path, output_loading_info=True, **model_kwargs)
            if tokenizer is None or isinstance(tokenizer, str):
                tokenizer = load_tokenizer(tokenizer or name_or_path)
        except Exception as err:
            if path.exists() and _is_file_damage(err):  # truncated weights, a broken JSON file, ...
                raise _damaged("model folder", path, err) from err
            if path.exists() and any(m in str(err) for m in ("does not recognize this architecture",
                                                              "Unrecognized configuration class")):
                raise ValueError(f"could not load the model in {str(path)!r}: {str(err).splitlines()[0]}") from err
            if path.exists() and "mismatched" in str(err).lower():  # a tensor's shape differs from config.json's
                raise ValueError(f"the weights in {str(path)!r} do not fit its config.json "
                                 f"({str(err).splitlines()[0]}); check that they belong together") from err
            if path.exists() or not isinstance(err, OSError):
                raise
            # a hub id that cannot be reached or does not exist: say what was tried
            raise FileNotFoundError(
                f"model {str(name_or_path)!r} is not a local folder, not a shipped model ({', '.join(available_models())}) "
                f"and could not be loaded from the Hugging Face hub: {str(err).splitlines()[0]}"
                + ("" if os.environ.get("HF_HUB_OFFLINE") else
                   " (on a machine without internet, HF_HUB_OFFLINE=1 skips the hub's connection retries)")
            ) from err
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers would initialise them at random and only log it
            raise ValueError(f"the weights of {str(name_or_path)!r} do not fit its config.json: {len(missing)} of the "
                             f"model's tensors are not in them ({', '.join(missing[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}) and would be random; check that config.json "
                             "and the weights belong together (a partial checkpoint on purpose: load it with "
                             "transformers and wrap it, LatentModel(model, tokenizer))")
        check_causal(model, str(name_or_path))
        lm = cls(model, tokenizer)
        meta = path / LATENT_META_FILE
        if meta.exists():
            lm.latent_tokens = LatentTokens(**json.loads(meta.read_text()))
            lm.latent_ids = LatentIds(*tokenizer.convert_tokens_to_ids(lm.latent_tokens.as_list()))
        elif add_latent_tokens:
            lm.add_latent_tokens(init_from=latent_init_token)
        side = path / SIDE_MODULES_FILE
        if side.exists():
            lm._pending_side_state = load_file(str(side))
        if path.is_dir():
            lm.trained_num_thoughts = recorded_num_thoughts(path)
        return lm

    @classmethod
    def _from_adapter(cls, path: Path, *, tokenizer: PreTrainedTokenizerBase | str | None, add_latent_tokens: bool,
                      latent_init_token: str | None, torch_dtype: torch.dtype | str | None,
                      **model_kwargs: Any) -> "LatentModel":
        """A LoRA folder written by `save_pretrained`: the recorded base model, its latent rows, then the adapter."""
        from peft import PeftConfig, PeftModel

        recorded = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
        if not recorded:
            raise FileNotFoundError(
                f"{str(path)!r} holds a LoRA adapter without a recorded base model (base_model_name_or_path): load "
                f"the base with LatentModel.from_pretrained(base), call apply_lora(...), then load_weights({str(path)!r})")
        shipped = Path(recorded).name if Path(recorded).parent.parts[-3:] == MODELS_DIR.parts[-3:] else None
        if shipped in available_models() and not Path(recorded).exists():
            recorded = shipped  # a shipped base recorded by another install (checkpoints of older versions)
        try:
            base = resolve_model_source(recorded)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"the LoRA checkpoint {str(path)!r} needs its base model {recorded!r} (adapter_config.json's "
                f"base_model_name_or_path), which is not here ({err}); put the base there, or set that field to "
                "where it is") from None
        if torch_dtype is not None:
            model_kwargs["torch_dtype"] = torch_dtype
        hf = AutoModelForCausalLM.from_pretrained(base, **model_kwargs)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or path)  # the adapter folder's tokenizer has the latent tokens
        lm = cls(hf, tokenizer)
        meta = path / LATENT_META_FILE
        if meta.exists():
            lm.latent_tokens = LatentTokens(**json.loads(meta.read_text()))
            lm.latent_ids = LatentIds(*tokenizer.convert_tokens_to_ids(lm.latent_tokens.as_list()))
            need = max(len(tokenizer), max(lm.latent_ids.start, lm.latent_ids.latent, lm.latent_ids.end) + 1)
            if need > hf.get_input_embeddings().weight.shape[0]:
                hf.resize_token_embeddings(need, mean_resizing=False)
            lm._restore_base_latent_rows(path)
        elif add_latent_tokens:
            lm.add_latent_tokens(init_from=latent_init_token)
        lm.model = PeftModel.from_pretrained(hf, str(path), is_trainable=True)
        side = path / SIDE_MODULES_FILE
        if side.exists():
            lm._pending_side_state = load_file(str(side))
        lm.trained_num_thoughts = recorded_num_thoughts(path)  # the adapter's own record, else its base's
        return lm

    # ------------------------------------------------------------------ LoRA
    @property
    def is_peft(self) -> bool:
        """Whether the HF model is wrapped by a peft adapter (`apply_lora`)."""
        return hasattr(self.model, "peft_config") and hasattr(self.model, "get_base_model")

    def apply_lora(self, cfg: "LoraConfig") -> None:
        """Wrap the HF model with peft LoRA adapters: base weights frozen, adapters (and latent-token rows) trainable.

        The latent tokens' rows are trained through peft's `trainable_token_indices` (only those rows are trainable
        and saved, and a tied LM head follows them) rather than `modules_to_save` on the embedding, which would
        train and save the whole V x H matrix. Side modules are not part of the peft model and keep training.
        """
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        if self.is_peft:
            raise ValueError("the model already has a peft adapter; apply_lora wraps a plain HF model once")
        targets = list(cfg.target_modules)
        tokens = None
        ends = (self.model.get_input_embeddings(), self.model.get_output_embeddings())
        whole = {name.rsplit(".", 1)[-1] for name, m in self.model.named_modules() if any(m is e for e in ends)}
        if set(cfg.modules_to_save) & whole:
            pass  # the embedding / LM head is trained whole (its latent rows with it); peft cannot do both on it
        elif cfg.train_latent_tokens and self.latent_ids is not None:
            ids = self.latent_ids
            tokens = sorted({ids.start, ids.latent, ids.end})
        peft_cfg = PeftLoraConfig(
            task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            modules_to_save=list(cfg.modules_to_save) or None, trainable_token_indices=tokens,
        )
        try:
            self.model = get_peft_model(self.model, peft_cfg)
        except ValueError as e:  # e.g. a target module name that is not in the model
            raise ValueError(f"LoRA could not wrap {type(self.model).__name__}: {e}") from None

    @contextmanager
    def adapter_disabled(self) -> Iterator["LatentModel"]:
        """This model with its LoRA adapter (and trained latent rows) switched off: the frozen base model."""
        if not self.is_peft:
            raise ValueError("adapter_disabled() needs a LoRA model (apply_lora)")
        with self.model.disable_adapter():
            yield self

    def merge_and_unload(self) -> "LatentModel":
        """Fold the LoRA adapter into the base weights (peft `merge_and_unload`): a plain HF model for export."""
        if not self.is_peft:
            raise ValueError("merge_and_unload() needs a LoRA model (apply_lora)")
        self.model = self.model.merge_and_unload()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """HF activation checkpointing of every decoder layer, non-reentrant (works with frozen inputs and LoRA)."""
        hf = self.model.get_base_model() if self.is_peft else self.model
        kwargs = {"use_reentrant": False}
        if not getattr(hf, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(hf).__name__} does not support gradient checkpointing")
        if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5 name
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether the decoder layers recompute activations in backward (HF then runs training forwards without a
        KV cache, so callers that need one, like the shared-prompt replay, must take the plain path)."""
        hf = self.model.get_base_model() if self.is_peft else self.model
        flag = getattr(type(hf), "is_activation_checkpointing", None)  # transformers >= 5 name
        return bool(getattr(hf, "is_activation_checkpointing" if flag is not None else "is_gradient_checkpointing",
                            False))

    def _latent_row_ids(self) -> list[int]:
        ids = self.latent_ids
        return [ids.start, ids.latent, ids.end] if ids is not None else []

    def _base_embedding_layers(self) -> dict[str, nn.Module]:
        """The base model's input (and, if untied, output) embedding layers, under any peft wrapper."""
        layers = {"input": _unwrap(self.model.get_input_embeddings())}
        out = self.model.get_output_embeddings()
        if out is not None and _unwrap(out).weight is not layers["input"].weight:
            layers["output"] = _unwrap(out)
        return layers

    def _restore_base_latent_rows(self, path: Path) -> None:
        """Write the saved base rows of the latent tokens back (frozen base weights; the reference model)."""
        f = path / BASE_LATENT_ROWS_FILE
        if not f.exists() or self.latent_ids is None:
            return
        rows = load_file(str(f))
        idx = torch.tensor(self._latent_row_ids())
        with torch.no_grad():
            for name, layer in self._base_embedding_layers().items():
                if name in rows:
                    layer.weight[idx.to(layer.weight.device)] = rows[name].to(layer.weight)

    def save_pretrained(self, out_dir: str | os.PathLike, full_state_dict: dict[str, torch.Tensor] | None = None,
                        **kwargs: Any) -> None:
        """`save_pretrained` for model and tokenizer, plus the latent-token names and side-module weights.

        A LoRA model writes its adapter only (peft format), plus the base rows of the latent tokens.
        `full_state_dict`: this module's full state dict to write instead of its parameters (an FSDP-sharded model,
        whose parameters are shards, passes the gathered one)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        side_state = {k: v for k, v in self.side_modules.state_dict().items()}
        if full_state_dict is not None:
            if self.is_peft:
                raise ValueError("save_pretrained(full_state_dict=...) is for full models, not LoRA adapters")
            state = {k[len("model."):]: v for k, v in full_state_dict.items() if k.startswith("model.")}
            # gathered copies of tied parameters are separate tensors: make them one again, so that HF drops the
            # tied duplicate (e.g. lm_head.weight) exactly as it does when saving the module itself
            first: dict[int, str] = {}
            for k, v in self.model.state_dict(keep_vars=True).items():
                if k in state and first.setdefault(id(v), k) != k:
                    state[k] = state[first[id(v)]]
            kwargs["state_dict"] = state
            side_state = {k[len("side_modules."):]: v for k, v in full_state_dict.items()
                          if k.startswith("side_modules.")}
        if self.is_peft:
            kwargs.setdefault("save_embedding_layers", False)  # the latent rows travel as trainable tokens
            self.model.save_pretrained(out, **kwargs)
            _record_portable_base(out / ADAPTER_CONFIG_FILE)
            if self.latent_ids is not None:
                idx = torch.tensor(self._latent_row_ids())
                rows = {k: layer.weight.detach()[idx.to(layer.weight.device)].contiguous().cpu()
                        for k, layer in self._base_embedding_layers().items()}
                save_file(rows, str(out / BASE_LATENT_ROWS_FILE))
        else:
            self.model.save_pretrained(out, **kwargs)
        self.tokenizer.save_pretrained(out)
        if self.latent_tokens is not None:
            (out / LATENT_META_FILE).write_text(json.dumps(self.latent_tokens.__dict__))
        # saved side modules this model loaded but no method attached yet (a checkpoint loaded only to export or
        # merge it) travel on, so that a save never drops a trained gate, value head or assistant
        attached = set(self.side_modules.keys())
        pending = getattr(self, "_pending_side_state", None) or {}
        side_state = {**{k: v for k, v in pending.items() if k.split(".", 1)[0] not in attached}, **side_state}
        if side_state:
            state = {k: v.detach().contiguous().cpu() for k, v in side_state.items()}
            save_file(state, str(out / SIDE_MODULES_FILE))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load LM and side-module weights saved by `save_pretrained` into this (already built) model.

        A LoRA model loads the adapter (and the latent tokens' base rows); its base weights stay as built."""
        path = Path(path)
        has_adapter = (path / ADAPTER_CONFIG_FILE).exists()
        if self.is_peft:
            if not has_adapter:
                raise FileNotFoundError(f"{str(path)!r} holds no LoRA adapter ({ADAPTER_CONFIG_FILE}): it was saved "
                                        "from a full fine-tune; resume it with lora.enabled=false")
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            result = set_peft_model_state_dict(self.model, load_peft_weights(str(path), device=str(self.device)))
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
            if unexpected:
                raise ValueError(f"the adapter in {str(path)!r} does not match this model's LoRA layout (unexpected "
                                 f"keys {unexpected[:5]}...): resume with the same lora.* options")
            self._restore_base_latent_rows(path)
        else:
            if has_adapter and not (path / "config.json").exists():
                raise FileNotFoundError(f"{str(path)!r} holds a LoRA adapter, not a full model: resume it with "
                                        "lora.enabled=true and the same lora.* options")
            fresh = AutoModelForCausalLM.from_pretrained(path, dtype=self.model.dtype)
            self.model.load_state_dict(fresh.state_dict())
        side = Path(path) / SIDE_MODULES_FILE
        if side.exists():
            state = load_file(str(side))
            attached = set(self.side_modules.keys())
            mine = {k: v for k, v in state.items() if k.split(".", 1)[0] in attached}
            if attached:
                self.side_modules.load_state_dict(mine)
            # modules of another method the checkpoint carried on (`save_pretrained`) travel on, unattached
            self._pending_side_state = {k: v for k, v in state.items() if k not in mine} or None

    def has_saved_side_module(self, name: str) -> bool:
        """Whether the checkpoint this model was loaded from holds weights of side module `name` (attached or not)."""
        pending = getattr(self, "_pending_side_state", None) or {}
        return any(k.startswith(f"{name}.") for k in pending)

    def attach_side_module(self, name: str, module: nn.Module) -> nn.Module:
        """Register a method's trainable module (gate, value head); loads saved weights if the checkpoint had them."""
        module = module.to(device=self.device)
        self.side_modules[name] = module
        pending = getattr(self, "_pending_side_state", None)
        if pending:
            prefix = f"{name}."
            sub = {k[len(prefix):]: v for k, v in pending.items() if k.startswith(prefix)}
            if sub:
                module.load_state_dict(sub)
        return module

    # ------------------------------------------------------------------ latent tokens
    def add_latent_tokens(self, tokens: LatentTokens | None = None, init_from: str | None = "<<") -> LatentIds:
        """Add `<|start-latent|>`, `<|latent|>`, `<|end-latent|>`; new embedding rows copy `init_from`'s row.

        Coconut initialises the new rows from an existing token (`<<`) for stability; if that token is unknown
        the rows keep HF's default initialisation (mean of the existing rows).
        """
        tokens = tokens or LatentTokens()
        self.tokenizer.add_special_tokens({"additional_special_tokens": tokens.as_list()})
        ids = LatentIds(*self.tokenizer.convert_tokens_to_ids(tokens.as_list()))
        old_rows = self.model.get_input_embeddings().weight.shape[0]
        need = max(len(self.tokenizer), max(ids.start, ids.latent, ids.end) + 1)
        if need > old_rows:
            self.model.resize_token_embeddings(need, mean_resizing=False)
        if init_from is not None:
            src = self.tokenizer.convert_tokens_to_ids(init_from)
            if src is not None and src != self.tokenizer.unk_token_id:
                with torch.no_grad():
                    for emb in {self.model.get_input_embeddings(), self.model.get_output_embeddings()}:
                        if emb is None:
                            continue
                        for i in (ids.start, ids.latent, ids.end):
                            emb.weight[i] = emb.weight[src]
        self.latent_tokens, self.latent_ids = tokens, ids
        return ids

    # ------------------------------------------------------------------ the shared forward
    @property
    def device(self) -> torch.device:
        return _unwrap(self.model.get_input_embeddings()).weight.device

    @property
    def hidden_size(self) -> int:
        return _unwrap(self.model.get_input_embeddings()).weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return _unwrap(self.output_head).weight.shape[0]

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """E (V×H): the input embedding matrix that mixtures of tokens are taken over.

        Under LoRA with trained latent rows this is peft's merged copy (base rows + trained rows, or the base rows
        inside `adapter_disabled()`), so mixtures see the same rows as `embed`."""
        return self.model.get_input_embeddings().weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def backbone(self) -> nn.Module:
        """The decoder stack without the LM head (works through PEFT wrappers)."""
        m = self.model
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        return getattr(m, m.base_model_prefix)

    @property
    def output_head(self) -> nn.Module:
        """The LM head module (through PEFT wrappers): what the chunked scorers of `latentrl.head_logprobs` take."""
        return self.model.get_output_embeddings()

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output_head(hidden)

    @property
    def packed_head(self) -> PackedHead:
        """The LM head's weight prepacked for oneDNN (`latentrl.packed_head`; packed on first use, one per model)."""
        packed = self.__dict__.get("_packed_head")
        if packed is None:
            packed = self.__dict__["_packed_head"] = PackedHead()
        return packed

    def decode_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`lm_head(hidden)` for decoding without autograd: from the prepacked head where it applies (a CPU float32
        head at large vocabularies: about half the time, the same values; `latentrl.packed_head`)."""
        head = self.output_head
        packed = self.packed_head
        return packed(head, hidden) if packed.applies(head, hidden) else head(hidden)

    def drop_packed_head(self) -> None:
        """Free the packed head (the trainer does after its rollouts: the update changes the weights anyway, and its
        own peak memory should not hold the copy)."""
        self.packed_head.drop()

    def check_packed_head(self) -> None:
        """Drop the packed head if the weight's values changed since it was packed: the rollout engine calls it once
        per rollout (a change through `.data` keeps the version counter the packed copy is keyed on)."""
        self.packed_head.check(self.output_head)

    def forward_embeds(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        compute_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor, Any]:
        """(logits, last hidden state, cache) for a batch of input embeddings."""
        out, cache = self._run_backbone(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden) if compute_logits else None
        return logits, hidden, cache

    def forward_embeds_layers(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[tuple[torch.Tensor, ...], Any]:
        """(every layer's hidden states, cache): the decoder's `hidden_states` (the input embeddings first, the last
        one after the final norm, equal to `forward_embeds`' last hidden state), for losses on inner layers."""
        out, cache = self._run_backbone(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache,
                                        output_hidden_states=True)
        return tuple(out.hidden_states), cache

    def _run_backbone(self, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache,
                      output_hidden_states: bool = False) -> tuple[Any, Any]:
        backbone = self.backbone()
        cache_kwarg = _cache_kwarg(type(backbone))
        out = backbone(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **{cache_kwarg: past_key_values},
        )
        return out, (getattr(out, cache_kwarg) if use_cache else None)


@functools.cache
def _cache_kwarg(backbone_cls: type) -> str:
    """The name under which this decoder stack takes and returns its KV cache: `cache` in current transformers
    (`past_key_values` is deprecated there and removed in 5.40), `past_key_values` in models that predate it."""
    return "cache" if "cache" in inspect.signature(backbone_cls.forward).parameters else "past_key_values"


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _is_file_damage(err: BaseException) -> bool:
    """Whether loading a local folder failed on its files (unreadable, truncated, unparsable), not on something
    else (a missing optional package, memory, a dtype): only then is the folder called damaged."""
    if isinstance(err, (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError)):
        return True
    return type(err).__name__ in ("SafetensorError", "HeaderTooLarge", "DecodeError")


#: files one of which a saved tokenizer writes (HF fast / slow / SentencePiece / BPE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


def _damaged(kind: str, path: Path, err: BaseException) -> ValueError:
    """The one-line error for a local folder whose files would not load."""
    first = (str(err).splitlines() or [""])[0]
    return ValueError(f"could not load the {kind} {str(path)!r} ({type(err).__name__}: {first}); it may be damaged "
                      "or incomplete")


def _record_portable_base(adapter_config: Path) -> None:
    """Make an adapter's recorded base model loadable from anywhere: peft writes the base as the caller typed it
    (`my-model`, relative to where training ran) or as a shipped model's folder inside this install; a relative
    folder becomes absolute and a shipped model its name (`chain_sum-cot`). Hub ids stay as they are."""
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).expanduser().exists():
        return
    folder = Path(base).expanduser().resolve()
    portable = folder.name if folder.parent == MODELS_DIR and folder.name in available_models() else str(folder)
    if portable != base:
        adapter_config.write_text(json.dumps({**config, "base_model_name_or_path": portable}, indent=2) + "\n",
                                  encoding="utf-8")


def resolve_model_source(name_or_path: str | os.PathLike) -> str:
    """`name_or_path` as `from_pretrained` should receive it, refusing early what can only be a missing local path.

    An existing path is returned as it is; a shipped model name becomes its folder; a string that could be a hub id
    (`name` or `org/name`) is left to the hub. Anything else that does not exist (`./x`, `/abs/x`, `~/x`,
    `runs/a/checkpoint-4`, a name with a file extension) is a FileNotFoundError here, not a hub request."""
    text = os.fspath(name_or_path)
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser())
    if text in available_models():
        return resolve_model(text)
    first = text.split("/")[0]
    local_parent = "/" in text and first not in ("", ".", "..", "~") and Path(first).is_dir()  # `runs/x`, local runs/
    if (text.startswith((".", "/", "~")) or "\\" in text or not _HUB_ID.match(text) or local_parent
            or text.endswith((".json", ".safetensors", ".bin"))):
        raise FileNotFoundError(
            f"model path {text!r} does not exist (relative to {os.getcwd()}), and it is not a shipped model name "
            f"({', '.join(available_models())})" + (f"; {first}/ is a local folder, so this is taken as a path, not a "
                                                    "hub id: train that model first (a preset's comment names the "
                                                    "command that writes it)" if local_parent else "")
        )
    close = difflib.get_close_matches(text, available_models(), n=1, cutoff=0.8) if "/" not in text else []
    if close:  # `chain_sum_cot` for `chain_sum-cot`: a typo, not a hub id (the hub would retry for ~50 s)
        raise FileNotFoundError(f"model {text!r} is not a local folder or a shipped model; did you mean {close[0]!r}? "
                                "(a hub id with this spelling: pass it as org/name)")
    return text


def _unwrap(layer: nn.Module) -> nn.Module:
    """The base layer under a peft wrapper (TrainableTokensWrapper, ModulesToSaveWrapper), else the layer itself."""
    inner = getattr(layer, "original_module", None)
    return inner if isinstance(inner, nn.Module) else layer
