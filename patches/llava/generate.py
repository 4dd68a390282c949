"""LLaVA's calling convention on FineCaption: ``model.generate(input_ids, images=..., image_sizes=...)`` with
``IMAGE_TOKEN_INDEX`` (-200) placeholders, and an image processor whose tensors carry the region mask.

Why: LLaVA's scripts build ``input_ids`` with ``llava.mm_utils.tokenizer_image_token`` (one -200 per image, not a
vocabulary id), turn images into tensors with ``process_images(images, image_processor, model.config)`` and call
``model.generate(input_ids, images=tensor, image_sizes=...)``; FineCaption takes ``<image>`` repeated
``num_image_tokens`` times, ``pixel_values`` and ``mask_values``. `LlavaImageProcessor` returns
``pixel_values`` of 4 channels, the normalised RGB and the region mask in [0, 1]: the mask is an RGBA image's
alpha channel (as in lmms-eval, ``visual_prompts.mask_from_alpha``) or an explicit ``masks=`` argument, the
whole image otherwise. ``generate`` maps each -200 to the expanded ``<image>`` tokens and splits the channels
(a 3-channel tensor means the whole image; ``masks=`` `[B, 1, S, S]` overrides). Like LLaVA's own model
(which generates from ``inputs_embeds``), it returns only the new tokens, which is what LLaVA's evaluation
scripts decode.
"""

from __future__ import annotations

import torch

IMAGE_TOKEN_INDEX = -200  # llava.constants.IMAGE_TOKEN_INDEX



class LlavaImageProcessor:
    """`FineCaptionImageProcessor` for LLaVA's callers: ``processor(images, return_tensors="pt")["pixel_values"]``
    and ``.preprocess(image, ...)`` give `[B, 4, S, S]` (RGB, then the mask)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor
        self.image_mean = image_processor.image_mean
        self.image_std = image_processor.image_std
        side = image_processor.image_size
        self.crop_size = {"height": side, "width": side}
        self.size = {"shortest_edge": side}

    def preprocess(self, images, return_tensors="pt", masks=None, **kwargs):
        from PIL import Image
        from transformers.feature_extraction_utils import BatchFeature

        from finecaption_plugin.visual_prompts import mask_from_alpha

        images = [images] if isinstance(images, Image.Image) else list(images)
        if masks is None:
            masks = [mask_from_alpha(image) for image in images]
        elif not isinstance(masks, (list, tuple)):
            masks = [masks]
        rgb = [image.convert("RGB") for image in images]
        features = self.image_processor(rgb, masks=list(masks), return_tensors="pt")
        pixel_values = torch.cat([features["pixel_values"], features["mask_values"].float()], dim=1)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    __call__ = preprocess

    def __getattr__(self, name):
        if name == "image_processor":
            raise AttributeError(name)
        return getattr(self.image_processor, name)


def llava_inputs(model_config, input_ids, attention_mask=None, images=None, masks=None):
    """LLaVA-style inputs -> FineCaption's ``input_ids``, ``attention_mask``, ``pixel_values``, ``mask_values``.

    Rows are left-padded with the pad token when their expansions differ in length (generation pads left).
    """
    count, image_id = model_config.num_image_tokens, model_config.image_token_id
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    rows, masks_rows = [], []
    for ids, keep in zip(input_ids, attention_mask, strict=True):
        out, out_mask = [], []
        for token, kept in zip(ids.tolist(), keep.tolist(), strict=True):
            if token == IMAGE_TOKEN_INDEX:
                out.extend([image_id] * count)
                out_mask.extend([1] * count)
            else:
                out.append(token)
                out_mask.append(kept)
        rows.append(out)
        masks_rows.append(out_mask)
    longest = max(len(row) for row in rows)
    pad = model_config.pad_token_id if getattr(model_config, "pad_token_id", None) is not None else 0
    new_ids = torch.tensor([[pad] * (longest - len(row)) + row for row in rows], device=input_ids.device)
    new_mask = torch.tensor([[0] * (longest - len(row)) + row for row in masks_rows], device=input_ids.device)
    inputs = {"input_ids": new_ids, "attention_mask": new_mask}
    if images is not None:
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        if images.dim() == 3:
            images = images.unsqueeze(0)
        pixel_values = images[:, :3]
        if masks is None and images.shape[1] == 4:
            masks = images[:, 3:]
        inputs["pixel_values"] = pixel_values
        if masks is not None:
            inputs["mask_values"] = masks.to(device=pixel_values.device)
    return inputs


def _vision_dtype(model) -> torch.dtype:
    tower = model.get_base_model() if hasattr(model, "get_base_model") else model
    return next(tower.model.vision_tower.parameters()).dtype


def llava_generate(model, generate, input_ids, images=None, masks=None, **kwargs):
    """``generate(**FineCaption inputs)`` for LLaVA-style arguments -> only the new tokens (LLaVA's output)."""
    converted = llava_inputs(model.config, input_ids, kwargs.pop("attention_mask", None), images, masks)
    dtype = _vision_dtype(model)
    for key in ("pixel_values", "mask_values"):
        if key in converted:
            converted[key] = converted[key].to(dtype)
    output = generate(**converted, **kwargs)
    prompt_length = converted["input_ids"].shape[1]
    if isinstance(output, torch.Tensor):
        return output[:, prompt_length:]
    output.sequences = output.sequences[:, prompt_length:]
    return output


_CLASS = None


def llava_model_class() -> type:
    """`FineCaptionForConditionalGeneration` whose ``generate`` also takes LLaVA's arguments: ``images=``
    (`[B, 3|4, S, S]`), ``image_sizes=`` (ignored: the processor already fitted the image), ``masks=``
    (`[B, 1, S, S]`) and -200 placeholders in ``input_ids``. Calls with ``pixel_values`` are plain FineCaption."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from finecaption_plugin import FineCaptionForConditionalGeneration

    class FineCaptionForLlava(FineCaptionForConditionalGeneration):
        def generate(self, inputs=None, images=None, image_sizes=None, masks=None, **kwargs):
            input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
            placeholders = input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any())
            if images is None and not placeholders:
                if input_ids is not None:
                    kwargs["input_ids"] = input_ids
                return super().generate(**kwargs)
            return llava_generate(self, super().generate, input_ids, images, masks, **kwargs)

    _CLASS = FineCaptionForLlava
    return _CLASS
