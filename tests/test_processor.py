"""FineCaptionProcessor: one geometric transform for image and mask, every mask form, chat template, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

import finecaption_plugin  # noqa: F401
from finecaption_plugin import FineCaptionImageProcessor
from finecaption_plugin.masks import MaskError, encode_compositioncap, encode_rle


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


def region_image(width: int, height: int, box: tuple[int, int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """A black image that is white exactly inside `box`, and the matching mask."""
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return Image.fromarray(np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)), mask


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


def test_processor_expands_image_tokens_and_pads_left(processor):
    image, mask = region_image(50, 50, box=(5, 5, 20, 20))
    out = processor(text=["<image>\nA long question about the region?", "<image>\nHi"], images=[image, image],
                    masks=[mask, None], return_tensors="pt", padding=True)
    image_id = processor.image_token_id
    assert (out["input_ids"] == image_id).sum(dim=1).tolist() == [16, 16]
    assert out["attention_mask"][1, 0] == 0 and out["attention_mask"][1, -1] == 1
    assert torch.all(out["mask_values"][1] == 1)


def test_chat_template_tokenized_with_images(processor):
    image, _ = region_image(40, 40, box=(0, 0, 10, 10))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Color?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<image>") == 1 and text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
    assert (out["input_ids"] == processor.image_token_id).sum() == 16 and out["pixel_values"].shape[0] == 1


def test_bad_inputs_are_clear_errors(processor):
    image, mask = region_image(50, 40, box=(5, 5, 20, 20))
    with pytest.raises(MaskError, match=r"image 1: field 'masks'.*"):
        processor(text=["<image>", "<image>"], images=[image, image], masks=[mask, np.ones((10, 10), bool)])
    with pytest.raises(MaskError, match=r"image 0: field 'masks': mask is empty"):
        processor(text=["<image>"], images=[image], masks=[np.zeros((40, 50), bool)])
    with pytest.raises(MaskError, match=r"image 0: field 'masks'"):
        processor(text=["<image>"], images=[image], masks=["not base64 at all!"])
    with pytest.raises(ValueError, match="2 <image> placeholders for 1 images"):
        processor(text=["<image><image>"], images=[image])
    with pytest.raises(ValueError, match="one mask"):
        processor(text=["<image>", "<image>"], images=[image, image], masks=[mask])


def test_loading_the_processor_logs_no_backend_fallback(tiny_checkpoint):
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()  # an earlier load in this session may have used up the "once"
    with CaptureLogger(hf_logging.get_logger("transformers")) as captured:
        processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert isinstance(processor.image_processor, FineCaptionImageProcessor)
    assert "backend" not in captured.out, captured.out
