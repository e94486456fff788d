"""Examples to text pieces: the context before each learned assistant turn, its content and what the
template writes after it (the end-of-turn), so that the response ids are what chat serving sees.

Rendering (``template``):

- ``chat``: the tokenizer's chat template. The context of a turn is the conversation before it
  rendered with ``add_generation_prompt=True``; the turn is the difference between the
  conversation rendered with and without it: its content, then the template's end-of-turn
  (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama-3, ``<end_of_turn>`` for Gemma). Of that
  end-of-turn the ids up to its last special token are learned; what follows (a newline) belongs
  to the next context. A template that writes no special token after the content gets the
  tokenizer's EOS instead, and so does a conversation the template does not render as a
  prefix of itself (the last turn only; with earlier learned turns that is an error).
- ``plain``: every prompt message as ``"### {Role}:\\n{content}\\n\\n"`` (Role capitalised) followed
  by ``"### Assistant:\\n"``; a prompt/completion record keeps its prompt text verbatim. The response
  ends with EOS.
- ``auto`` (default): ``chat`` when the tokenizer has a chat template, else ``plain``; a
  prompt/completion record is always kept verbatim under ``auto`` (its prompt is already text).

An Alpaca record is one user message (``instruction``, a blank line, ``input``), after its
``system`` and ``history`` turns; a prompt/completion record is one user message holding the prompt.
"""
from __future__ import annotations

from typing import NamedTuple

from mint.choices import TEMPLATES
from mint.errors import MintError

__all__ = ["Piece", "render_prompt", "resolve_template", "turn_pieces", "special_ids"]


class Piece(NamedTuple):
    """One learned turn: the text before it (since the previous turn's content), its content,
    and the template's text after the content (None: end the content with the tokenizer's EOS)."""

    context: str
    content: str
    suffix: str | None


def resolve_template(template: str, tokenizer) -> str:
    if template not in TEMPLATES:
        raise MintError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise MintError("template 'chat' was asked for but the tokenizer has no chat template; use 'plain' or 'auto'")
    if template == "auto":
        return "chat" if has_chat else "plain"
    return template


def _plain(messages) -> str:
    return "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages)


def _verbatim(example, template: str, tokenizer) -> bool:
    """A plain-text prompt/completion record kept as written (``auto``), or any record under ``plain``."""
    mode = resolve_template(template, tokenizer)
    return mode == "plain" or (template == "auto" and example.prompt_text is not None)


def render_prompt(example, tokenizer, *, template: str = "auto") -> str:
    """The prompt text the model sees before the (last) response (see the module docstring)."""
    if _verbatim(example, template, tokenizer):
        if example.prompt_text is not None:
            return example.prompt_text
        return _plain(example.prompt_messages) + "### Assistant:\n"
    return tokenizer.apply_chat_template(list(example.prompt_messages), tokenize=False, add_generation_prompt=True)


def _learned(example, assistant_turns: str) -> list[int]:
    """Indices of the learned turns in the conversation (prompt messages + response)."""
    last = len(example.prompt_messages)
    return (list(example.learned) if assistant_turns == "all" else []) + [last]


def _plain_pieces(example, turns: list[int]) -> list[Piece]:
    if example.prompt_text is not None:
        return [Piece(example.prompt_text, example.response, None)]
    conv = list(example.prompt_messages) + [{"role": "assistant", "content": example.response}]
    pieces, start = [], 0
    for n, k in enumerate(turns):
        close = "\n\n" if n else ""  # what `_plain` writes after an assistant turn's content
        pieces.append(Piece(close + _plain(conv[start:k]) + "### Assistant:\n", conv[k]["content"], None))
        start = k + 1
    return pieces


_MARK = "\ue000mint\ue001"  # stands in for a turn's content to find where the template writes it


def _split_turn(conv, k: int, render, done: str) -> tuple[str, str, str, str] | None:
    """(context since `done`, content as written, suffix, the rendering up to the turn's end) of
    turn k, or None when the template does not render the conversation as a prefix of itself."""
    prefix, full = render(conv[:k], True), render(conv[:k + 1], False)
    marked = render(conv[:k] + [{**conv[k], "content": _MARK}], False)
    if not (prefix.startswith(done) and full.startswith(prefix) and marked.startswith(prefix)):
        return None
    head, found, suffix = marked[len(prefix):].partition(_MARK)
    if not found or not full.startswith(prefix + head) or not full.endswith(suffix):
        return None
    content = full[len(prefix) + len(head):len(full) - len(suffix)]
    if not content.strip() or _MARK in suffix:
        return None
    return prefix[len(done):] + head, content, suffix, full


def _chat_pieces(example, tokenizer, turns: list[int]) -> list[Piece]:
    conv = list(example.prompt_messages) + [{"role": "assistant", "content": example.response}]

    def render(messages, generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    pieces, done = [], ""
    for k in turns:
        split = _split_turn(conv, k, render, done)
        if split is None:
            if len(turns) > 1:
                raise MintError(f"record {example.index}: the chat template does not render the conversation up to "
                                f"message {k} as the start of the conversation after it, so its assistant turns "
                                "cannot be told apart; use assistant_turns 'last' or template 'plain'")
            # the earlier behaviour: the prompt as the template renders it, the response ended with EOS
            return [Piece(render(conv[:k], True), conv[k]["content"], None)]
        context, content, suffix, done = split
        pieces.append(Piece(context, content, suffix))
    return pieces


def turn_pieces(example, tokenizer, *, template: str = "auto", assistant_turns: str = "all") -> list[Piece]:
    """The learned turns of `example` as text pieces, in order (see the module docstring)."""
    turns = _learned(example, assistant_turns)
    if _verbatim(example, template, tokenizer):
        return _plain_pieces(example, turns)
    return _chat_pieces(example, tokenizer, turns)


def special_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokenizer's special tokens (named ones and added tokens marked special): the
    candidates for a template's end-of-turn token."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return frozenset(ids)
