"""Prompt templates and token-exact rendering.

A conversation is rendered as a list of segments (text, learned?). Each segment is tokenized on
its own and its labels are written at the same moment as its ids, so the loss mask can never
drift from the tokens (no re-tokenizing of a rendered string). Media markers inside a segment
become placeholder ids, one per feature vector, plus an optional end-of-media token.

Message contents are text: a special token typed in them (`<|endoftext|>`, `<|im_end|>`) is
encoded as the characters it is made of, so a user cannot end a turn or fake one. Only what the
template itself writes (chat markers, EOS) becomes control tokens. transformers' own
`sanitize_control_tokens` machinery does the work: contents are marked, then encoded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from transformers.utils.chat_template_utils import mark_control_tokens

from omnilm.core.sample import IGNORE, MEDIA_TOKENS, PLACEHOLDER_IDS, Message
from omnilm.data.markers import MARKER, MODALITY_OF
from omnilm.errors import ConfigError, DataError


@dataclass
class Segment:
    text: str
    learn: bool


@dataclass
class PlainTemplate:
    """Fixed strings around each turn; works with any tokenizer, chat template or not."""

    user_prefix: str = ""
    user_suffix: str = ""
    assistant_prefix: str = ""
    turn_sep: str = "\n"
    system_suffix: str = "\n"

    def segments(self, messages: list[Message], tokenizer, generation_prompt: bool) -> list[Segment]:
        out: list[Segment] = []
        for i, msg in enumerate(messages):
            if msg.role == "system":
                out.append(Segment(msg.content + self.system_suffix, False))
            elif msg.role == "user":
                out.append(Segment(self.user_prefix + msg.content + self.user_suffix, False))
            elif msg.role == "assistant":
                # Prefix and content are one segment: " yes" and " " + "yes" tokenize differently.
                out.append(Segment(self.assistant_prefix + msg.content + tokenizer.eos_token, True))
                if i + 1 < len(messages):
                    out.append(Segment(self.turn_sep, False))
            else:
                raise DataError(f"unknown message role {msg.role!r} (use system, user or assistant)")
        return out


class ChatTemplate:
    """The tokenizer's own chat template, split into per-message segments by rendering prefixes."""

    def segments(self, messages: list[Message], tokenizer, generation_prompt: bool) -> list[Segment]:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'chat' needs a tokenizer with a chat template; use 'phi' or 'plain'")
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        out, done = [], ""
        for k, msg in enumerate(messages):
            before_assistant = msg.role == "assistant"
            if before_assistant:  # the assistant header is prompt, not something to learn
                head = tokenizer.apply_chat_template(dicts[:k], tokenize=False, add_generation_prompt=True)
                out.append(Segment(_suffix(done, head), False))
                done = head
            text = tokenizer.apply_chat_template(dicts[: k + 1], tokenize=False)
            out.append(Segment(_suffix(done, text), before_assistant))
            done = text
        if generation_prompt:
            text = tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
            out.append(Segment(_suffix(done, text), False))
        return [s for s in out if s.text]


def _suffix(prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise ConfigError("the tokenizer's chat template does not render conversations prefix-by-prefix")
    return text[len(prefix):]


TEMPLATES = {
    "caption": PlainTemplate(turn_sep=""),  # seed stage 1: <image><eoi> caption <eos>
    "plain": PlainTemplate(assistant_prefix=" "),
    "phi": PlainTemplate(user_prefix="Instruct: ", user_suffix="\nOutput:", assistant_prefix=" "),
    "chat": ChatTemplate(),
}


def get_template(name: str):
    if name not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def render(
    messages: list[Message],
    tokenizer,
    template,
    media_tokens: dict[str, list[int]],
    end_token_ids: dict[str, int | None] | None = None,
    generation_prompt: bool = False,
    add_bos: bool = False,
    special_tokens_in_text: bool = False,
) -> tuple[list[int], list[int]]:
    """-> (input_ids, labels). media_tokens[modality][i] = feature count of that modality's i-th item.

    special_tokens_in_text: let special tokens written inside message contents be control tokens
    (an operator's opt-in; off, they are plain text)."""
    end_token_ids = end_token_ids or {}
    if not special_tokens_in_text:
        pattern = control_tokens_pattern(tokenizer)
        messages = [Message(m.role, mark_control_tokens(m.content, pattern)) for m in messages]
    ids: list[int] = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE] * len(ids)
    used = {m: 0 for m in MEDIA_TOKENS}
    for segment in template.segments(messages, tokenizer, generation_prompt):
        for piece in MARKER.split(segment.text):
            if not piece:
                continue
            if piece in MODALITY_OF:
                modality = MODALITY_OF[piece]
                counts = media_tokens.get(modality, [])
                if used[modality] >= len(counts):
                    raise DataError(f"more {piece} markers in the text than {modality} inputs ({len(counts)})")
                piece_ids = [PLACEHOLDER_IDS[modality]] * counts[used[modality]]
                if end_token_ids.get(modality) is not None:
                    piece_ids.append(end_token_ids[modality])
                used[modality] += 1
                ids += piece_ids
                labels += [IGNORE] * len(piece_ids)  # media is never a target
            else:
                piece_ids = _encode(tokenizer, piece, sanitize=not special_tokens_in_text)
                ids += piece_ids
                labels += piece_ids if segment.learn else [IGNORE] * len(piece_ids)
    for modality, counts in media_tokens.items():
        if used[modality] != len(counts):
            raise DataError(
                f"{len(counts)} {modality} inputs but {used[modality]} {MEDIA_TOKENS[modality]} markers in the text"
            )
    return ids, labels


def control_tokens_pattern(tokenizer) -> re.Pattern:
    """The tokenizer's special tokens (and chat control tokens it declares), media markers aside:
    the markers are how media enters a prompt and are checked against the media count."""
    declared = set(getattr(tokenizer, "chat_control_tokens", None) or ())
    tokens = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special or t.content in declared}
    return _alternatives(tuple(sorted(tokens - set(MEDIA_TOKENS.values()))))


@lru_cache
def _alternatives(tokens: tuple[str, ...]) -> re.Pattern:
    longest_first = sorted(tokens, key=len, reverse=True)  # a token wins over the tokens inside it
    return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")  # (?!) matches nothing


def _encode(tokenizer, text: str, sanitize: bool) -> list[int]:
    """Ids of a piece; with `sanitize`, control tokens marked as user text are encoded as plain text."""
    try:
        return tokenizer(text, add_special_tokens=False, sanitize_control_tokens=sanitize)["input_ids"]
    except ValueError as err:  # the tokenizer makes a control token even from the plain characters
        raise DataError(f"cannot encode {text[:80]!r} as plain text: {err}") from None
