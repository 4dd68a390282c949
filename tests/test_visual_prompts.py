import re

import numpy as np
import pytest
from PIL import Image

from finecaption_plugin.masks import MaskError, box_to_mask, mask_to_box, mask_to_contour
from finecaption_plugin.prompts import DEFAULT_REGION, task_prompt
from finecaption_plugin.visual_prompts import (
    MARK_COLOR,
    OVERLAY_OPACITY,
    REGION_PHRASES,
    VISUAL_PROMPT_STYLES,
    crop_box,
    image_with_mask_alpha,
    line_width,
    mask_from_alpha,
    render_visual_prompt,
    write_demo,
)

RED = np.array(MARK_COLOR, np.uint8)


def noise_image(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    # channel values 20..200 so any red marking is a visible change
    pixels = np.random.default_rng(seed).integers(20, 200, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def disc(width: int = 160, height: int = 120, cx: float = 80, cy: float = 60, r: float = 25) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r**2


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return (np.asarray(before) != np.asarray(after)).any(axis=2)


def test_styles_and_unknown_style():
    assert VISUAL_PROMPT_STYLES == ("mask", "bbox", "bbox_text", "contour", "overlay", "crop")
    assert set(REGION_PHRASES) == set(VISUAL_PROMPT_STYLES)
    with pytest.raises(ValueError, match="unknown visual prompt style 'box'.*mask, bbox, bbox_text"):
        render_visual_prompt(noise_image(), disc(), "box", "x")


def test_line_width_scales_with_image_size():
    assert line_width((1024, 768)) == 4
    assert line_width((2048, 1024)) == 8
    assert line_width((128, 128)) == 2


@pytest.mark.parametrize("size", [(160, 120), (1024, 1024)])
def test_bbox_border_is_red_and_interior_unchanged(size):
    image = noise_image(*size)
    mask = box_to_mask((size[0] // 4, size[1] // 3, size[0] // 2, size[1] // 2), size[1], size[0]) & disc(
        *size, cx=size[0] * 0.4, cy=size[1] * 0.4, r=size[1] * 0.2
    )
    x0, y0, x1, y1 = mask_to_box(mask)
    out, prompt = render_visual_prompt(image, mask, "bbox", task_prompt("rdc"))
    w = line_width(size)
    ring = box_to_mask((x0 - w, y0 - w, x1 + w, y1 + w), size[1], size[0]) & ~box_to_mask(
        (x0, y0, x1, y1), size[1], size[0]
    )
    pixels = np.asarray(out)
    assert (pixels[ring] == RED).all()
    assert np.array_equal(changed(image, out), ring & (np.asarray(image) != RED).any(axis=2))
    assert prompt == "Describe the region inside the red box in detail, covering all of its attributes."


def test_bbox_at_image_edge_stays_inside_the_frame():
    image = noise_image()
    mask = box_to_mask((0, 0, 30, 20), 120, 160)
    out, _ = render_visual_prompt(image, mask, "bbox", DEFAULT_REGION)
    pixels = np.asarray(out)
    w = line_width(image.size)
    assert (pixels[0, :30] == RED).all() and (pixels[:20, 0] == RED).all()
    assert (pixels[20 : 20 + w, :30] == RED).all() and (pixels[:20, 30 : 30 + w] == RED).all()
    assert not changed(image, out)[w:20, w:30].any()


def test_contour_lies_near_the_boundary_only():
    image, mask = noise_image(), disc()
    out, prompt = render_visual_prompt(image, mask, "contour", task_prompt("aarc", "color"))
    diff = changed(image, out)
    w = line_width(image.size)
    boundary = np.argwhere(mask_to_contour(mask))
    chebyshev = np.abs(np.argwhere(diff)[:, None, :] - boundary[None, :, :]).max(axis=2).min(axis=1)
    assert diff.any() and chebyshev.max() <= w
    assert (diff & mask).any() and (diff & ~mask).any()  # the outline straddles the boundary
    assert (np.asarray(out)[diff] == RED).all()
    assert prompt == "Describe the color of the region outlined in red."


def test_overlay_changes_only_masked_pixels():
    image, mask = noise_image(), disc()
    out, _ = render_visual_prompt(image, mask, "overlay", DEFAULT_REGION)
    assert np.array_equal(changed(image, out), mask)
    before = np.asarray(image, np.float32)[mask]
    expected = np.rint((1 - OVERLAY_OPACITY) * before + OVERLAY_OPACITY * RED.astype(np.float32))
    assert np.array_equal(np.asarray(out)[mask], expected.astype(np.uint8))


def test_crop_contains_box_with_expected_size():
    image = noise_image(300, 200)
    mask = box_to_mask((100, 80, 140, 100), 200, 300)
    out, prompt = render_visual_prompt(image, mask, "crop", DEFAULT_REGION)
    assert out.size == (3 * 40, 3 * 20)  # grown by one box size on each side
    assert crop_box((100, 80, 140, 100), image.size) == (60, 60, 180, 120)
    assert np.array_equal(np.asarray(out)[20:40, 40:80], np.asarray(image)[80:100, 100:140])
    assert prompt == REGION_PHRASES["crop"]


def test_crop_minimum_size_and_clipping():
    image = noise_image(300, 200)
    out, _ = render_visual_prompt(image, box_to_mask((150, 100, 154, 103), 200, 300), "crop", "x")
    assert out.size == (48, 48)
    assert crop_box((150, 100, 154, 103), image.size) == (128, 78, 176, 126)
    assert crop_box((0, 190, 10, 200), image.size) == (0, 171, 29, 200)


def test_bbox_text_numbers_parse_back_to_the_box():
    image = noise_image(160, 120)
    mask = disc(r=21)
    out, prompt = render_visual_prompt(image, mask, "bbox_text", task_prompt("rdc"))
    assert not changed(image, out).any()
    numbers = [float(v) for v in re.search(r"\[([0-9., ]+)\]", prompt).group(1).split(", ")]
    assert all(re.fullmatch(r"\d\.\d{3}", f"{v:.3f}") for v in numbers) and len(numbers) == 4
    scaled = [round(v * s) for v, s in zip(numbers, (160, 120, 160, 120), strict=True)]
    assert tuple(scaled) == mask_to_box(mask)
    assert DEFAULT_REGION not in prompt


def test_mask_style_carries_the_mask_in_alpha():
    image, mask = noise_image(), disc()
    prompt = task_prompt("rdc")
    out, out_prompt = render_visual_prompt(image, mask, "mask", prompt)
    assert out.mode == "RGBA" and out_prompt == prompt
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(image))
    assert np.array_equal(mask_from_alpha(out), mask)


def test_alpha_round_trip_and_edge_cases():
    image = noise_image()
    mask = np.random.default_rng(3).random((120, 160)) > 0.5
    rgba = image_with_mask_alpha(image, mask)
    assert np.array_equal(mask_from_alpha(rgba), mask)
    assert np.array_equal(np.asarray(rgba)[..., :3], np.asarray(image))
    assert mask_from_alpha(image) is None
    assert mask_from_alpha(image_with_mask_alpha(image, np.ones((120, 160), bool))) is None
    with pytest.raises(MaskError, match="fully transparent"):
        mask_from_alpha(image_with_mask_alpha(image, np.zeros((120, 160), bool)))
    soft = rgba.copy()
    soft.putpixel((3, 4), (*soft.getpixel((3, 4))[:3], 128))  # one anti-aliased pixel: a soft alpha
    with pytest.raises(MaskError, match="not a mask: 1 pixels are neither 0 nor 255"):
        mask_from_alpha(soft)
    with pytest.raises(MaskError, match="expected 120x160"):
        image_with_mask_alpha(image, np.ones((10, 10), bool))


def test_prompt_without_region_phrase_gets_it_appended():
    image, mask = noise_image(), disc()
    _, prompt = render_visual_prompt(image, mask, "bbox", "Provide a short description for this region.")
    assert prompt == "Provide a short description for this region. Look at the region inside the red box."
    _, prompt = render_visual_prompt(image, mask, "mask", "Provide a short description for this region.")
    assert prompt == "Provide a short description for this region."


def test_no_mask_leaves_everything_unchanged_and_input_is_never_modified():
    image = noise_image()
    snapshot = np.asarray(image).copy()
    for style in VISUAL_PROMPT_STYLES:
        out, prompt = render_visual_prompt(image, None, style, "Describe the image in detail.")
        assert out is image and prompt == "Describe the image in detail."
        render_visual_prompt(image, disc(), style, DEFAULT_REGION)
    assert np.array_equal(np.asarray(image), snapshot)


def test_bad_masks_raise():
    image = noise_image()
    with pytest.raises(MaskError, match="mask is empty"):
        render_visual_prompt(image, np.zeros((120, 160), bool), "bbox", "x")
    with pytest.raises(MaskError, match="expected 120x160"):
        render_visual_prompt(image, np.ones((60, 80), bool), "bbox", "x")


def test_demo_writes_one_small_png_per_style(tmp_path):
    written = write_demo(tmp_path)
    assert [p.stem for p in written] == list(VISUAL_PROMPT_STYLES)
    for path in written:
        assert path.stat().st_size < 100_000
        with Image.open(path) as image:
            assert image.width >= 48 and image.height >= 48
    lines = (tmp_path / "prompts.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == list(VISUAL_PROMPT_STYLES)
