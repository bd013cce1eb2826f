"""Prompt formats: a dataset prompt as raw text, or as the user turn of the tokenizer's chat template.

Instruct models are trained on their chat template; feeding them bare text wastes what they learned. With
`prompt_format=chat` the prompt becomes `[system?, user]` messages rendered by `tokenizer.apply_chat_template`
with the assistant turn opened (`add_generation_prompt=True`). The method's prompt hook runs on the rendered text,
so a suffix such as Coconut's `<|start-latent|>` lands inside the assistant turn, where the completion starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import PreTrainedTokenizerBase

from latentrl.config import ConfigError
from latentrl.data.schema import PROMPT_END

__all__ = ["PROMPT_FORMATS", "chat_prompt", "check_chat_template", "messages_prompt", "prompt_formatter"]

PROMPT_FORMATS = ("raw", "chat")


def check_chat_template(tokenizer: PreTrainedTokenizerBase, conversational: bool = False) -> None:
    """Raise a ConfigError if `tokenizer` has no chat template (base models usually have none). `conversational`:
    the prompt is a list of messages, which only a template can render (prompt_format does not apply to it)."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if conversational:
            raise ConfigError(f"a prompt given as chat messages needs a tokenizer with a chat template, but {name!r} "
                              "has none (a base model?): give the prompts as text, use an instruct model, or set "
                              "tokenizer.chat_template")
        raise ConfigError(f"prompt_format=chat needs a tokenizer with a chat template, but {name!r} has none "
                          "(a base model?): use prompt_format=raw, an instruct model, or set tokenizer.chat_template")


def chat_prompt(tokenizer: PreTrainedTokenizerBase, text: str, system_prompt: str | None = None) -> str:
    """`text` as the user message of the chat template, ending with the opened assistant turn."""
    check_chat_template(tokenizer)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def messages_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
                    system_prompt: str | None = None) -> str:
    """A conversational prompt (TRL's format: a list of role/content messages) rendered by the chat template, with the
    assistant turn opened, or continued when the conversation ends with an assistant message (TRL's
    `maybe_apply_chat_template`). `system_prompt` is put first unless the conversation has a system message."""
    check_chat_template(tokenizer, conversational=True)
    messages = list(messages)
    if system_prompt is not None and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    cont = messages[-1].get("role") == "assistant"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not cont,
                                         continue_final_message=cont)


def prompt_formatter(tokenizer: PreTrainedTokenizerBase, prompt_format: str, system_prompt: str | None = None,
                     method_prompt: Callable[[dict[str, Any]], str] = lambda row: row["prompt"]
                     ) -> Callable[[dict[str, Any]], str]:
    """row -> model input text: the prompt in `prompt_format`, then the method's prompt hook (`Method.prompt_text`).

    A prompt that is a list of chat messages (TRL's conversational format) always goes through the chat template,
    whatever `prompt_format` says, as in TRL. Checks the chat template up front for `chat`, so a missing one fails
    when the trainer is built, not at the first step.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"prompt_format={prompt_format!r}; allowed: {', '.join(PROMPT_FORMATS)}")
    if prompt_format == "raw" and system_prompt is not None:
        raise ConfigError("system_prompt is only used with prompt_format=chat")
    if prompt_format == "chat":
        check_chat_template(tokenizer)

    def fmt(row: dict[str, Any]) -> str:
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            return method_prompt({**row, "prompt": messages_prompt(tokenizer, prompt, system_prompt)})
        if prompt_format == "chat":
            question = row.get("question")
            if isinstance(question, str) and prompt == f"{question} {PROMPT_END}":
                prompt = question  # an Example's row: the template ends the user turn, not the `||` marker
            return method_prompt({**row, "prompt": chat_prompt(tokenizer, prompt, system_prompt)})
        return method_prompt(row)

    return fmt
