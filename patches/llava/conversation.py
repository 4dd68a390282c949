"""LLaVA-NeXT's ``llava_llama_3`` conversation template in ``llava.conversation.conv_templates``.

Why: FineCaption's language model is LLaMA-3 and is trained with the ``llama3`` template
(``finecaption_plugin.conversation``, LLaVA-NeXT's ``conv_llava_llama_3``), which ``llava-torch`` 1.2.2.post1
(haotian-liu/LLaVA) lacks: ``--conv-mode llava_llama_3`` (or ``llama3``) would fall back to another template
and prompt the model in a format it never saw. The added template renders exactly what
``processor.apply_chat_template(..., add_generation_prompt=True)`` renders, and stops at ``<|eot_id|>``.
"""

from __future__ import annotations

import dataclasses

from finecaption_plugin.conversation import LLAMA3_BOS, LLAMA3_EOT, LLAMA3_SYSTEM, llama3_header

NAMES = ("llava_llama_3", "llama3")


def llama3_conversation_class():
    """A ``llava.conversation.Conversation`` subclass that renders LLaMA-3 turns (its ``copy`` keeps the class)."""
    from llava.conversation import Conversation

    @dataclasses.dataclass
    class Llama3Conversation(Conversation):
        def get_prompt(self):
            prompt = LLAMA3_BOS + llama3_header("system") + self.system + LLAMA3_EOT
            for role, message in self.messages:
                if message:
                    if isinstance(message, tuple):
                        message = message[0]
                    prompt += llama3_header(role) + message + LLAMA3_EOT
                else:
                    prompt += llama3_header(role)
            return prompt

        def copy(self):
            return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages])

    return Llama3Conversation


def patch() -> None:
    """Add ``llava_llama_3`` and ``llama3`` to ``llava.conversation.conv_templates`` (kept if present)."""
    from llava import conversation

    if all(name in conversation.conv_templates for name in NAMES):
        return
    template = llama3_conversation_class()(
        system=LLAMA3_SYSTEM,
        roles=("user", "assistant"),
        messages=[],
        offset=0,
        sep_style=conversation.SeparatorStyle.PLAIN,
        sep=LLAMA3_EOT,
        sep2=LLAMA3_EOT,
        version="llama3",
    )
    for name in NAMES:
        conversation.conv_templates.setdefault(name, template)
