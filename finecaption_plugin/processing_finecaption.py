"""Processor for FineCaption: the image processor, the tokenizer and `<image>` expansion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .conversation import IMAGE_TOKEN, escape_special_tokens


class FineCaptionProcessor(ProcessorMixin):
    r"""
    Wraps a [`FineCaptionImageProcessor`] and a tokenizer.

    Each `<image>` in the text stands for one image and is expanded to `num_image_tokens` copies, which the model
    replaces with the image features (transformers' LLaVA convention). Call it as
    `processor(text=..., images=[...], masks=[...], return_tensors="pt", padding=True)`; masks are one per image,
    in any form `finecaption_plugin.masks.load_mask` reads, or None for the whole image.

    Args:
        image_processor: a [`FineCaptionImageProcessor`].
        tokenizer: a tokenizer that has `image_token` as a special token.
        chat_template: Jinja chat template for `apply_chat_template`.
        num_image_tokens: image tokens per image (`FineCaptionConfig.num_image_tokens`).
        image_token: the placeholder token.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        num_image_tokens: int = 1024,
        image_token: str = IMAGE_TOKEN,
        **kwargs: Any,
    ):
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {image_token!r} token; add it as a special token first")
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(
        self,
        images: Image.Image | Sequence[Image.Image] | None = None,
        text: str | Sequence[str] | None = None,
        masks: Any = None,
        return_tensors: str | None = None,
        **tokenizer_kwargs: Any,
    ) -> BatchFeature:
        """Text with one `<image>` per image -> `input_ids`, `attention_mask`, `pixel_values`, `mask_values`."""
        if text is None:
            raise ValueError("FineCaptionProcessor needs text (with one <image> per image)")
        texts = [text] if isinstance(text, str) else list(text)
        image_inputs = {}
        num_images = 0
        if images is not None:
            image_inputs = self.image_processor(images, masks=masks, return_tensors=return_tensors)
            num_images = len(image_inputs["pixel_values"])
        elif masks is not None:
            raise ValueError("masks were given without images")
        placeholders = sum(sample.count(self.image_token) for sample in texts)
        if placeholders != num_images:
            raise ValueError(
                f"the text holds {placeholders} {self.image_token} placeholders for {num_images} images: "
                "put exactly one per image"
            )
        expanded = [sample.replace(self.image_token, self.image_token * self.num_image_tokens) for sample in texts]
        text_inputs = self.tokenizer(expanded, return_tensors=return_tensors, **tokenizer_kwargs)
        return BatchFeature(data={**text_inputs, **image_inputs}, tensor_type=return_tensors)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """The chat template's prompt, with every special-token string in the messages' text made plain text
        (`conversation.escape_special_tokens`): special tokens come from the template only, as in training."""
        return super().apply_chat_template(_escaped(conversation, self.tokenizer), chat_template, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))


def _escaped(conversation, tokenizer):
    """A copy of the messages (one conversation or a batch) with their text escaped; other values kept."""
    if isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], (list, tuple)):
        return [_escaped(messages, tokenizer) for messages in conversation]
    out = []
    for message in conversation:
        if not isinstance(message, dict):
            out.append(message)
            continue
        content = message.get("content")
        if isinstance(content, str):
            content = escape_special_tokens(content, tokenizer)
        elif isinstance(content, (list, tuple)):
            content = [
                {**item, "text": escape_special_tokens(item["text"], tokenizer)}
                if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)
                else item
                for item in content
            ]
        out.append({**message, "content": content})
    return out


__all__ = ["FineCaptionProcessor"]
