"""LLaVA conversation templates (``--version``) and their tokenisation with assistant-only labels.

A template renders a conversation into text segments, each marked trained (an assistant reply and its
end-of-turn token) or not (system prompt, user turns, role headers). The text is tokenised once as a
whole; every token is labelled by the segment its last character falls in. A token that spans a
segment boundary with more than whitespace on the earlier side means the template's separators are
not token boundaries of this tokenizer: that is a "tokenization mismatch" error, never a silently
masked sample (LLaVA's loss of 0). Each template also gives the Jinja chat template that renders the
same prompt at inference, so training and ``processor.apply_chat_template`` agree.

User text is text: a special-token string inside a user turn, a reply or a record (``<|eot_id|>``, ``</s>``,
...) is tokenised as ordinary characters (``escape_special_tokens``, applied here and by the processor's
``apply_chat_template``); special tokens come only from the template. ``<image>`` is the one placeholder a
turn may hold. Text must be valid Unicode (a lone surrogate is an error naming the turn).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
USER, ASSISTANT = "user", "assistant"
# LLaVA's "from" values and the chat-message roles, both accepted.
ROLE_NAMES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)


class ConversationError(ValueError):
    """A conversation that a template cannot render or a tokenizer cannot split at the turn boundaries."""


# Put after the first character of a special-token string found in user text, so that the tokenizer reads it as
# text (a word joiner: invisible, and no tokenizer's special token contains it).
TEXT_MARK = "\u2060"


def special_token_strings(tokenizer) -> tuple[str, ...]:
    """The strings the tokenizer reads as one special token: its special tokens and special added tokens."""
    strings = set(getattr(tokenizer, "all_special_tokens", None) or ())
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            strings.add(str(token))
    return tuple(sorted(string for string in strings if len(string) > 1))


@functools.lru_cache(maxsize=16)
def _special_pattern(strings: tuple[str, ...]) -> re.Pattern | None:
    if not strings:
        return None
    return re.compile("|".join(re.escape(string) for string in sorted(strings, key=len, reverse=True)))


def escape_special_tokens(text: str, tokenizer, keep: Sequence[str] = (IMAGE_TOKEN,)) -> str:
    """``text`` with every special-token string of ``tokenizer`` (but those in ``keep``) made plain text: a word
    joiner (U+2060) after its first character, so ``<|eot_id|>`` typed by a user is read as ``<``, ``|``, ... and
    never ends a turn. Text without special-token strings is returned unchanged."""
    pattern = _special_pattern(tuple(string for string in special_token_strings(tokenizer) if string not in keep))
    if pattern is None:
        return text
    return pattern.sub(lambda match: match.group(0)[0] + TEXT_MARK + match.group(0)[1:], text)


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text (a lone surrogate, which no tokenizer or file can take), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"not valid Unicode text: a lone surrogate U+{ord(text[error.start]):04X} at character {error.start}"
    return None


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


@dataclass(frozen=True)
class ConversationTemplate:
    """One ``--version``: how user and assistant turns are joined, and which tokens it relies on.

    ``required_tokens`` must each be a single token of the tokenizer; ``"{bos}"``/``"{eos}"`` in the
    format strings stand for the tokenizer's own BOS/EOS tokens.
    """

    name: str
    system: str
    prefix: str  # before the first turn, e.g. BOS and the system prompt
    user: str  # a user turn; "{content}" is the message
    assistant_header: str  # the untrained text that opens an assistant turn (the generation prompt)
    assistant_suffix: str  # trained, closes an assistant turn
    reply_prefix: str = ""  # trained, opens the reply after the header
    required_tokens: tuple[str, ...] = ()
    chat_template: str | None = None

    def special_strings(self, tokenizer) -> dict[str, str]:
        return {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""}

    def segments(
        self, turns: Sequence[tuple[str, str]], tokenizer, add_generation_prompt: bool = False
    ) -> list[Segment]:
        """Render ``turns`` [(role, text)], alternating user/assistant from a user turn, into segments."""
        special = self.special_strings(tokenizer)
        out = [Segment(self.prefix.format(system=self.system, **special), False)]
        for index, (role, text) in enumerate(turns):
            expected = USER if index % 2 == 0 else ASSISTANT
            if role != expected:
                raise ConversationError(
                    f"turn {index} is from {role!r}, expected {expected!r} (turns alternate)"
                )
            text = escape_special_tokens(text, tokenizer)  # special tokens come from the template only
            if role == USER:
                out.append(Segment(self.user.format(content=text, **special), False))
                out.append(Segment(self.assistant_header.format(**special), False))
            else:
                out.append(Segment(self.reply_prefix + text + self.assistant_suffix.format(**special), True))
        if turns and turns[-1][0] == ASSISTANT and add_generation_prompt:
            raise ConversationError("add_generation_prompt needs the conversation to end with a user turn")
        if turns and turns[-1][0] == USER and not add_generation_prompt:
            out.pop()  # the trailing assistant header belongs to a generation prompt only
        return [segment for segment in out if segment.text]

    def check_tokenizer(self, tokenizer) -> None:
        """Raise `ConversationError` when the tokenizer lacks a token this template is built on."""
        needed = [t.format(**self.special_strings(tokenizer)) for t in self.required_tokens]
        for token in needed:
            if not token or len(tokenizer.encode(token, add_special_tokens=False)) != 1:
                raise ConversationError(
                    f"conversation template {self.name!r} needs {token or 'a BOS/EOS token'!r} to be one "
                    "token of the tokenizer, and it is not: is --version right for this model?"
                )


VICUNA_CHAT_TEMPLATE = (
    "{{ bos_token }}" + VICUNA_SYSTEM + " "
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
    " ASSISTANT:"
    "{% else %} "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endif %}{% endfor %}"
)
# LLaMA-3's special tokens: a turn is header(role) + text + EOT, after BOS.
LLAMA3_BOS, LLAMA3_EOT = "<|begin_of_text|>", "<|eot_id|>"
LLAMA3_HEADER_TOKENS = ("<|start_header_id|>", "<|end_header_id|>")


def llama3_header(role: str) -> str:
    """The header that opens a LLaMA-3 turn of ``role``."""
    start, end = LLAMA3_HEADER_TOKENS
    return f"{start}{role}{end}\n\n"


LLAMA3_CHAT_TEMPLATE = (
    LLAMA3_BOS + llama3_header("system") + LLAMA3_SYSTEM + LLAMA3_EOT + "{% for message in messages %}"
    + llama3_header("{{ message['role'] }}")
    + "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
    + LLAMA3_EOT + "{% endfor %}"
    "{% if add_generation_prompt %}" + llama3_header("assistant") + "{% endif %}"
)

TEMPLATES: dict[str, ConversationTemplate] = {
    # LLaVA-1.5's conv_vicuna_v1: "SYSTEM USER: q ASSISTANT: a</s>USER: ...". The generation prompt ends at
    # "ASSISTANT:"; the space before the reply joins its first token, which is trained, as in LLaVA.
    "vicuna_v1": ConversationTemplate(
        name="vicuna_v1",
        system=VICUNA_SYSTEM,
        prefix="{bos}{system} ",
        user="USER: {content} ",
        assistant_header="ASSISTANT:",
        assistant_suffix="{eos}",
        reply_prefix=" ",
        required_tokens=("{eos}",),
        chat_template=VICUNA_CHAT_TEMPLATE,
    ),
    # LLaVA-NeXT's conv_llava_llama_3.
    "llama3": ConversationTemplate(
        name="llama3",
        system=LLAMA3_SYSTEM,
        prefix=LLAMA3_BOS + llama3_header("system") + "{system}" + LLAMA3_EOT,
        user=llama3_header("user") + "{content}" + LLAMA3_EOT,
        assistant_header=llama3_header("assistant"),
        assistant_suffix=LLAMA3_EOT,
        required_tokens=(LLAMA3_BOS, *LLAMA3_HEADER_TOKENS, LLAMA3_EOT),
        chat_template=LLAMA3_CHAT_TEMPLATE,
    ),
    # LLaVA's conv_llava_plain for projector pretraining: "<image>caption\n", only the caption trained.
    "plain": ConversationTemplate(
        name="plain", system="", prefix="{bos}", user="{content}", assistant_header="", assistant_suffix="\n"
    ),
}
# The names LLaVA and LLaVA-NeXT scripts pass for the same templates.
ALIASES = {"v1": "vicuna_v1", "llava_v1": "vicuna_v1", "llava_llama_3": "llama3", "llama_3": "llama3"}


def get_template(version: str) -> ConversationTemplate:
    name = ALIASES.get(version, version)
    if name not in TEMPLATES:
        known = sorted(TEMPLATES) + sorted(ALIASES)
        raise ConversationError(f"unknown conversation template --version {version!r}; choose one of {known}")
    return TEMPLATES[name]


def normalize_turns(conversations: Sequence[dict], template: ConversationTemplate, has_image: bool) -> list:
    """LLaVA's ``conversations`` [{"from", "value"}] -> [(role, text)], with LLaVA's preprocessing.

    A leading assistant turn is dropped and ``<image>`` moves to the front of its turn (as LLaVA does); a
    sample with an image but no ``<image>`` gets one in its first turn. The plain template keeps only
    ``<image>`` as the user text, as LLaVA's projector pretraining does.
    """
    turns = []
    for index, message in enumerate(conversations):
        if not isinstance(message, dict) or "from" not in message or "value" not in message:
            raise ConversationError(f"turn {index} must be an object with 'from' and 'value'")
        role = ROLE_NAMES.get(str(message["from"]).lower())
        if role is None:
            raise ConversationError(f"turn {index} has unknown 'from' {message['from']!r}")
        if not isinstance(message["value"], str):
            raise ConversationError(f"turn {index} has a non-string 'value'")
        problem = unicode_problem(message["value"])
        if problem:
            raise ConversationError(f"turn {index} 'value' is {problem}")
        turns.append((role, message["value"]))
    if turns and turns[0][0] == ASSISTANT:
        turns = turns[1:]
    if not turns or len(turns) < 2:
        raise ConversationError("needs at least one user turn followed by an assistant turn")
    image_turns = [i for i, (_, text) in enumerate(turns) if IMAGE_TOKEN in text]
    if sum(text.count(IMAGE_TOKEN) for _, text in turns) > 1:
        raise ConversationError(f"has more than one {IMAGE_TOKEN}; a sample carries one image")
    if image_turns and not has_image:
        raise ConversationError(f"has {IMAGE_TOKEN} in its text but no 'image'")
    if has_image:
        index = image_turns[0] if image_turns else 0
        if turns[index][0] != USER:
            raise ConversationError(f"has {IMAGE_TOKEN} in an assistant turn")
        text = turns[index][1].replace(IMAGE_TOKEN, "").strip()
        turns[index] = (USER, IMAGE_TOKEN if template.name == "plain" else f"{IMAGE_TOKEN}\n{text}")
    if template.name == "plain" and len(turns) != 2:
        raise ConversationError("the plain template takes exactly one user and one assistant turn")
    return turns


def tokenize_segments(segments: Sequence[Segment], tokenizer) -> tuple[list[int], list[int]]:
    """Tokenise the joined segments once -> (input_ids, labels), labels `IGNORE_INDEX` outside trained text.

    Raises `ConversationError` ("tokenization mismatch") when a token crosses a segment boundary with more
    than whitespace on the earlier side, or when a trained segment gets no token of its own.
    """
    text = "".join(segment.text for segment in segments)
    ends, position = [], 0
    for segment in segments:
        position += len(segment.text)
        ends.append(position)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels, segment_index, trained_hits = [], 0, set()
    for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
        last = max(end - 1, start)
        while segment_index < len(ends) - 1 and last >= ends[segment_index]:
            segment_index += 1
        begin = ends[segment_index - 1] if segment_index else 0
        if start < begin and text[start:begin].strip():
            raise ConversationError(
                f"tokenization mismatch: token {text[start:end]!r} spans the boundary before "
                f"{segments[segment_index].text[:30]!r}; is --version right for this tokenizer?"
            )
        if segments[segment_index].trained:
            labels.append(token_id)
            trained_hits.add(segment_index)
        else:
            labels.append(IGNORE_INDEX)
    missing = [i for i, segment in enumerate(segments) if segment.trained and i not in trained_hits]
    if missing:
        raise ConversationError(
            f"tokenization mismatch: the assistant reply {segments[missing[0]].text[:30]!r} got no token"
        )
    return list(encoding["input_ids"]), labels
