"""In-process tokenizers for tiny models and synthetic tasks.

No tokenizer hub is reachable on the machines this project is built on, and the synthetic tasks are written as
whitespace-separated symbols, so a word-level tokenizer built in process is exact, small and fast. The result is
an ordinary `PreTrainedTokenizerFast`: it saves and loads with `save_pretrained`/`from_pretrained` like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
DIGITS = [str(d) for d in range(10)]
SYMBOLS = ["+", "-", "*", "/", "=", "(", ")", "<<", ">>", "||", "####", "%", ",", ".", "?", ":"]


def build_word_tokenizer(words: Iterable[str] = (), *, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer whose vocabulary is specials + digits + symbols + `words`.

    Decoding joins tokens with single spaces, so any text written as space-separated vocabulary words round-trips.
    """
    vocab: dict[str, int] = {}
    for w in [PAD, UNK, BOS, EOS, *DIGITS, *SYMBOLS, *words]:
        if w and w not in vocab:
            if any(ch.isspace() for ch in w):
                raise ValueError(f"tokenizer word {w!r} contains whitespace; words must be single symbols")
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="\x00", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(name_or_path) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained`, except that a generic fast tokenizer stays exactly as saved.

    transformers 5 picks the tokenizer class from the *model* config (e.g. Qwen2Tokenizer) and rebuilds its
    pre-tokenizer, which would silently change how our word-level vocabularies split text.
    """
    cfg = Path(name_or_path) / "tokenizer_config.json"
    if cfg.exists():
        cls = json.loads(cfg.read_text()).get("tokenizer_class")
        if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path)


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str | None) -> list[int] | None:
    """Token ids of a piece of text (no special tokens added), or None."""
    if not text:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{text!r} tokenizes to no ids")
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids and text != tokenizer.unk_token:
        raise ValueError(f"{text!r} contains tokens unknown to the tokenizer (ids {ids})")
    return ids


def delimiter_spellings(tokenizer: PreTrainedTokenizerBase, text: str | None) -> list[list[int]] | None:
    """The distinct id sequences of `text` alone and after a space / newline: a BPE tokenizer writes `" ####"` in
    running text with other ids than `"####"`, and a rule on ids must recognise either (word tokenizers give one)."""
    if not text:
        return None
    base = text_ids(tokenizer, text)
    out = [base]
    for prefix in (" ", "\n"):
        ids = tokenizer(prefix + text, add_special_tokens=False)["input_ids"]
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        if prefix_ids and ids[: len(prefix_ids)] == prefix_ids:  # the prefix stayed its own token(s): drop it
            ids = ids[len(prefix_ids):]
        unk = tokenizer.unk_token_id
        if ids and ids not in out and (unk is None or unk not in ids):
            out.append(ids)
    return out
