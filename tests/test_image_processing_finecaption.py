"""FineCaptionImageProcessor: one geometric transform (pad or resize) for the image and its mask, every mask form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_processing_finecaption import region_image

from finecaption_plugin import FineCaptionImageProcessor
from finecaption_plugin.image_processing_finecaption import ASPECT_RATIOS
from finecaption_plugin.masks import encode_compositioncap, encode_rle
from finecaption_plugin.training_args import IMAGE_ASPECT_RATIOS


def test_llava_aspect_ratio_flags_map_onto_the_processor_s():
    assert IMAGE_ASPECT_RATIOS == {"square": "resize", "pad": "pad"}  # LLaVA's "square" stretches
    assert set(IMAGE_ASPECT_RATIOS.values()) == set(ASPECT_RATIOS)
    with pytest.raises(ValueError, match="aspect_ratio must be one of"):
        FineCaptionImageProcessor(aspect_ratio="square")


@pytest.mark.parametrize("aspect_ratio", ["pad", "resize"])
@pytest.mark.parametrize("size", [(300, 120), (90, 200)])
def test_image_and_mask_get_the_same_geometric_transform(aspect_ratio, size):
    image, mask = region_image(*size, box=(size[0] // 4, size[1] // 3, size[0] * 3 // 4, size[1] * 2 // 3))
    processor = FineCaptionImageProcessor(image_size=64, aspect_ratio=aspect_ratio)
    out = processor(image, masks=mask, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 64, 64) and out["mask_values"].shape == (1, 1, 64, 64)
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    brightness = (out["pixel_values"][0] * std[:, None, None] + mean[:, None, None]).mean(0)
    inside = out["mask_values"][0, 0] > 0.5
    bright = brightness > 0.5
    assert (inside == bright).float().mean() > 0.97  # the white square and the mask land on the same pixels
    assert inside.any()


def test_padding_is_mean_colour_and_outside_the_region():
    image, mask = region_image(128, 64, box=(0, 0, 128, 64))  # the whole image is the region
    processor = FineCaptionImageProcessor(image_size=64)
    out = processor(image, masks=mask, return_tensors="pt")
    top_band, middle = out["mask_values"][0, 0, :10], out["mask_values"][0, 0, 24:40]
    assert torch.all(top_band == 0) and torch.all(middle == 1)
    # LLaVA's expand2square fill, tuple(int(x * 255) for x in CLIP's mean): (122, 116, 104), not the rounded 123, 117.
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    padding = out["pixel_values"][0, :, :10] * std[:, None, None] + mean[:, None, None]
    torch.testing.assert_close(
        padding * 255, torch.tensor([122.0, 116.0, 104.0])[:, None, None].expand_as(padding), rtol=0, atol=1e-3
    )


def test_every_mask_form_gives_the_same_mask_values():
    image, mask = region_image(60, 40, box=(10, 5, 30, 25))
    processor = FineCaptionImageProcessor(image_size=32)
    forms = [
        mask,
        mask.astype(np.uint8) * 255,
        Image.fromarray(mask.astype(np.uint8) * 255),
        encode_compositioncap(mask),
        encode_rle(mask),
        {"bbox": [10, 5, 30, 25]},
    ]
    expected = processor(image, masks=mask)["mask_values"]
    for form in forms:
        np.testing.assert_array_equal(processor(image, masks=form)["mask_values"], expected)
    whole = processor(image)["mask_values"]
    assert whole.max() == 1 and not np.array_equal(whole, expected)
