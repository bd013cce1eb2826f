"""Model shapes shared by the benchmarks: named presets of real models, built with random weights in code.

`--preset NAME` gives a real model's shapes (nothing is downloaded); any shape option given explicitly on the command
line overrides the preset. `resolve_shape` fills the options a script left unset, `hf_config` builds the Hugging Face
config, so every benchmark builds the same model from the same options.
"""

from __future__ import annotations

import argparse
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Qwen2.5-0.5B (its config.json): tied embeddings, q/k/v biases (Qwen2 always has them).
    "qwen2.5-0.5b": dict(arch="qwen2", hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864,
                         vocab_size=151936, rope_theta=1_000_000.0, max_positions=32768),
}
#: the tiny default shape (2 layers, 128 wide) both benchmarks use without --preset
DEFAULTS: dict[str, Any] = dict(arch="qwen2", hidden=128, layers=2, heads=4, kv_heads=None, intermediate=512,
                                vocab_size=64, rope_theta=10_000.0, max_positions=2048)
SHAPE_KEYS = ("arch", "hidden", "layers", "heads", "kv_heads", "intermediate", "vocab_size")


def add_shape_args(p: argparse.ArgumentParser, *, arch: bool = True, vocab_help: str = "model vocab (default 64)") -> None:
    """The shape options (all default None, so that `resolve_shape` can tell "given" from "left to the preset")."""
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model shape preset, random weights (explicit shape options below override it)")
    if arch:
        p.add_argument("--arch", choices=("qwen2", "llama", "gpt2"), default=None, help="default: qwen2")
    p.add_argument("--hidden", type=int, default=None, help="hidden size (default 128)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 2)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default 4)")
    p.add_argument("--kv-heads", type=int, default=None, help="KV heads (default: heads/2 for qwen2, heads for llama)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP size (default 4*hidden)")
    p.add_argument("--vocab-size", type=int, default=None, help=vocab_help)


def resolve_shape(args: argparse.Namespace, *, min_positions: int, defaults: dict[str, Any] | None = None) -> None:
    """Fill every shape option left None from `--preset` (else `defaults`), in place.

    Without a preset an explicit `--hidden` without `--intermediate` gets 4*hidden. Also sets `rope_theta` and
    `max_positions` (at least `min_positions`). A script without `--arch` gets the default arch (qwen2).
    """
    base = dict(defaults or DEFAULTS)
    if args.preset:
        base.update(PRESETS[args.preset])
    elif getattr(args, "intermediate", None) is None and getattr(args, "hidden", None) is not None:
        base["intermediate"] = 4 * args.hidden
    for key in SHAPE_KEYS:
        if getattr(args, key, None) is None:
            setattr(args, key, base[key])
    if args.kv_heads is None:
        args.kv_heads = max(1, args.heads // 2) if args.arch == "qwen2" else args.heads
    args.rope_theta, args.max_positions = base["rope_theta"], max(base["max_positions"], min_positions)


def hf_config(args: argparse.Namespace, vocab_size: int, **special_ids: int):
    """The Hugging Face config of the resolved shape in `args` (qwen2 / llama / gpt2), with `vocab_size` rows."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, **special_ids)
    if args.arch in ("qwen2", "llama"):
        cls = Qwen2Config if args.arch == "qwen2" else LlamaConfig
        return cls(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                   num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                   max_position_embeddings=args.max_positions, rope_theta=args.rope_theta,
                   tie_word_embeddings=args.arch == "qwen2", **common)
    return GPT2Config(n_embd=args.hidden, n_layer=args.layers, n_head=args.heads, n_inner=args.intermediate,
                      n_positions=args.max_positions, **common)


def word_tokenizer_fixed() -> int:
    """Entries of `build_word_tokenizer` before its extra words (special tokens, digits, symbols)."""
    from latentrl.tokenizer import build_word_tokenizer

    return len(build_word_tokenizer([]))


def word_tokenizer_words(vocab_size: int) -> int:
    """How many extra words `build_word_tokenizer` needs for a tokenizer of exactly `vocab_size` entries."""
    return max(0, vocab_size - word_tokenizer_fixed())
