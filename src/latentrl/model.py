"""LatentModel: any Hugging Face causal LM + its tokenizer + the latent special tokens + small side modules.

The wrapper never patches the HF model. It reaches the two pieces every latent method needs through public
HF APIs: the decoder stack (`base_model_prefix`) that maps input embeddings to the last-layer hidden state, and
the LM head (`get_output_embeddings`). Method-specific trainable modules (HRPO's gate, a value head) live in
`side_modules` beside the LM and are saved with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from latentrl.tokenizer import load_tokenizer

SIDE_MODULES_FILE = "latentrl_side_modules.safetensors"
LATENT_META_FILE = "latentrl_latent_tokens.json"


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


class LatentModel(nn.Module):
    """A causal LM ready for latent reasoning.

    `forward_embeds` is the one entry point the rollout engine, the replay scorer and the SFT code share: it takes
    input embeddings (so a position may hold a token embedding or a continuous thought) and returns logits and the
    last-layer hidden state (post final norm, as Coconut feeds back).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
            tokenizer.pad_token = tokenizer.eos_token
        self.side_modules = nn.ModuleDict()
        self.latent_tokens: LatentTokens | None = None
        self.latent_ids: LatentIds | None = None

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
        """Load a causal LM and its tokenizer from a local folder or a hub id."""
        path = Path(name_or_path)
        if str(name_or_path).startswith((".", "/")) and not path.exists():
            raise FileNotFoundError(f"model path {str(path)!r} does not exist")
        if path.exists() and path.is_dir() and not (path / "config.json").exists():
            raise FileNotFoundError(f"{str(path)!r} is not a Hugging Face model folder: no config.json in it")
        if torch_dtype is not None:
            model_kwargs["torch_dtype"] = torch_dtype
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **model_kwargs)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer or name_or_path)
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
        return lm

    def save_pretrained(self, out_dir: str | os.PathLike, **kwargs: Any) -> None:
        """`save_pretrained` for model and tokenizer, plus the latent-token names and side-module weights."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, **kwargs)
        self.tokenizer.save_pretrained(out)
        if self.latent_tokens is not None:
            (out / LATENT_META_FILE).write_text(json.dumps(self.latent_tokens.__dict__))
        if len(self.side_modules):
            state = {k: v.detach().contiguous().cpu() for k, v in self.side_modules.state_dict().items()}
            save_file(state, str(out / SIDE_MODULES_FILE))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load LM and side-module weights saved by `save_pretrained` into this (already built) model."""
        fresh = AutoModelForCausalLM.from_pretrained(path, dtype=self.model.dtype)
        self.model.load_state_dict(fresh.state_dict())
        side = Path(path) / SIDE_MODULES_FILE
        if side.exists() and len(self.side_modules):
            self.side_modules.load_state_dict(load_file(str(side)))

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
        return self.model.get_input_embeddings().weight.device

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """E (V×H): the input embedding matrix that mixtures of tokens are taken over."""
        return self.model.get_input_embeddings().weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def backbone(self) -> nn.Module:
        """The decoder stack without the LM head (works through PEFT wrappers)."""
        m = self.model
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        return getattr(m, m.base_model_prefix)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)

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
        out = self.backbone()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            return_dict=True,
        )
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden) if compute_logits else None
        return logits, hidden, (out.past_key_values if use_cache else None)
