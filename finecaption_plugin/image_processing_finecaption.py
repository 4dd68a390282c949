"""Image processor for FineCaption: one geometric transform for the image and its region mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, make_flat_list_of_images

from .masks import MaskError, load_mask, resize_mask

ASPECT_RATIOS = ("pad", "resize")


def pad_to_square(array: np.ndarray, fill: Sequence[float] | float) -> np.ndarray:
    """Centre an `[H, W, ...]` array on a square canvas of side `max(H, W)` filled with `fill` (LLaVA's `pad`)."""
    height, width = array.shape[:2]
    side = max(height, width)
    canvas = np.empty((side, side, *array.shape[2:]), dtype=array.dtype)
    canvas[...] = fill
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = array
    return canvas


class FineCaptionImageProcessor(BaseImageProcessor):
    r"""
    Prepares images and region masks for [`FineCaptionForConditionalGeneration`].

    Both towers read the same `image_size` square: the image is padded to a square with the mean colour
    (LLaVA-HR's `image_aspect_ratio="pad"`) or stretched (`"resize"`), resized with bicubic filtering and
    normalised with CLIP's statistics. The mask gets the same padding (outside the image is outside the region)
    and a bilinear resize, giving soft values in [0, 1] that the model normalises as Alpha-CLIP does.

    Args:
        image_size: side S of the square the model reads.
        image_mean, image_std: per-channel normalisation.
        aspect_ratio: `"pad"` or `"resize"`.
    """

    model_input_names = ["pixel_values", "mask_values"]

    def __init__(
        self,
        image_size: int = 1024,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        aspect_ratio: str = "pad",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"aspect_ratio must be one of {ASPECT_RATIOS}, got {aspect_ratio!r}")
        self.image_size = image_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.aspect_ratio = aspect_ratio

    def preprocess_image(self, image: Image.Image) -> np.ndarray:
        """A PIL image -> `[3, S, S]` float32, normalised."""
        pixels = np.asarray(image.convert("RGB"))
        if self.aspect_ratio == "pad":
            # Truncated, not rounded: LLaVA's `expand2square(image, tuple(int(x * 255) for x in image_mean))`.
            pixels = pad_to_square(pixels, [int(mean * 255) for mean in self.image_mean])
        size = (self.image_size, self.image_size)
        resized = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return array.transpose(2, 0, 1)

    def preprocess_mask(self, mask: Any, image: Image.Image) -> np.ndarray:
        """Any mask form of `finecaption_plugin.masks` (None: whole image) -> `[1, S, S]` float32 in [0, 1]."""
        width, height = image.size
        region = np.ones((height, width), bool) if mask is None else load_mask(mask, height, width)
        if self.aspect_ratio == "pad":
            region = pad_to_square(region, False)
        return resize_mask(region, (self.image_size, self.image_size))[None]

    def __call__(
        self,
        images: Image.Image | Sequence[Image.Image],
        masks: Any | Sequence[Any] | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Images with their masks -> `pixel_values` `[B, 3, S, S]`, `mask_values` `[B, 1, S, S]`.

        `images` may be nested per sample (as `apply_chat_template` passes them); `masks` is one mask per image,
        in the same order (None: the whole image); for a single PIL image, its one mask.
        """
        single = isinstance(images, Image.Image)
        images = make_flat_list_of_images(images)
        if single or masks is None:
            masks = [masks] * len(images)
        if len(masks) != len(images):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks: give one mask (or None) per image")
        mask_values = []
        for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
            try:
                mask_values.append(self.preprocess_mask(mask, image))
            except MaskError as err:
                raise MaskError(f"image {index}: field 'masks': {err}") from None
        data = {
            "pixel_values": np.stack([self.preprocess_image(image) for image in images]),
            "mask_values": np.stack(mask_values),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["FineCaptionImageProcessor"]
