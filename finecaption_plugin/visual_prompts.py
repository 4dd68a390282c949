"""Visual prompts: show a region to a model that does not take masks.

FineCaption reads the mask itself (style ``mask``); baselines need the region marked on the image
or named in the text. Styles follow the practice of the model's peers:

| style       | image given to the model                                       | region phrase        |
|-------------|----------------------------------------------------------------|----------------------|
| `mask`      | unchanged RGB, the mask in the alpha channel                   | unchanged            |
| `bbox`      | red box around the region (lmms-eval RefCOCO, scaled width)    | "inside the red box" |
| `bbox_text` | unchanged                                                      | normalised box       |
| `contour`   | thick red outline, the boundary shifted by +-width (ViP-LLaVA) | "outlined in red"    |
| `overlay`   | translucent red fill of the region                             | "highlighted in red" |
| `crop`      | box grown by one box size per side, >= 48 px (DAM focal crop)  | "in the middle"      |

The prompt refers to the region as ``prompts.DEFAULT_REGION``; that phrase is replaced by the
style's phrase from ``REGION_PHRASES`` (or the phrase is appended when the prompt lacks it).
``python -m finecaption_plugin.visual_prompts --demo OUTDIR`` writes one example PNG per style.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .masks import MaskError, dilate_mask, load_mask, mask_to_box, mask_to_contour, polygon_to_mask
from .prompts import DEFAULT_REGION, task_prompt

logger = logging.getLogger(__name__)

VISUAL_PROMPT_STYLES: tuple[str, ...] = ("mask", "bbox", "bbox_text", "contour", "overlay", "crop")
MARK_COLOR: tuple[int, int, int] = (255, 0, 0)
OVERLAY_OPACITY = 0.5
CROP_MIN_SIZE = 48

REGION_PHRASES: dict[str, str] = {
    "mask": DEFAULT_REGION,
    "bbox": "the region inside the red box",
    "bbox_text": "the region in the box {box} (x0, y0, x1, y1 as fractions of the image width and height)",
    "contour": "the region outlined in red",
    "overlay": "the region highlighted in red",
    "crop": "the object in the middle of this close-up",
}

Box = tuple[int, int, int, int]


def line_width(size: tuple[int, int]) -> int:
    """Marking width in pixels for an image of ``size`` (width, height): 4 px at 1024 px, at least 2."""
    return max(2, round(max(size) / 256))


def normalized_box(box: Box, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A pixel box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) as fractions of ``size`` (width, height)."""
    width, height = size
    return box[0] / width, box[1] / height, box[2] / width, box[3] / height


def crop_box(box: Box, size: tuple[int, int]) -> Box:
    """DAM's focal crop: ``box`` grown by its own size on each side, at least 48 px, clipped to the image."""
    bounds = []
    for low, high, limit in ((box[0], box[2], size[0]), (box[1], box[3], size[1])):
        extent = high - low
        grown_low, grown_high = low - extent, high + extent
        missing = CROP_MIN_SIZE - (grown_high - grown_low)
        if missing > 0:
            grown_low -= missing // 2
            grown_high += missing - missing // 2
        bounds.append((max(grown_low, 0), min(grown_high, limit)))
    (x0, x1), (y0, y1) = bounds
    return x0, y0, x1, y1


def image_with_mask_alpha(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """RGBA copy of ``image`` whose alpha is the mask (255 inside, 0 outside); mask bool [H, W]."""
    mask = load_mask(mask, image.height, image.width, allow_empty=True)
    rgba = image.convert("RGB")
    rgba.putalpha(Image.fromarray(mask.astype(np.uint8) * 255))
    return rgba


def mask_from_alpha(image: Image.Image) -> np.ndarray | None:
    """The mask an RGBA image carries (alpha 255 inside, 0 outside) -> bool [H, W]; None without alpha
    or fully opaque. This is how the lmms-eval model receives a region through lmms-eval's visuals.

    Raises ``MaskError`` for an alpha channel that is not such a mask: fully transparent, or holding
    values other than 0 and 255 (a soft alpha, as in an ordinary transparent PNG).
    """
    if "A" not in image.getbands():
        return None
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() == 255:
        return None
    if alpha.max() == 0:
        raise MaskError("the image's alpha channel is fully transparent: the region mask would be empty")
    soft = np.count_nonzero((alpha != 0) & (alpha != 255))
    if soft:
        raise MaskError(f"the image's alpha channel is not a mask: {soft} pixels are neither 0 nor 255")
    return alpha == 255


def _render_mask(image: Image.Image, mask: np.ndarray, box: Box) -> Image.Image:
    return image_with_mask_alpha(image, mask)


def _render_unchanged(image: Image.Image, mask: np.ndarray, box: Box) -> Image.Image:
    return image


def _render_bbox(image: Image.Image, mask: np.ndarray, box: Box) -> Image.Image:
    # The line surrounds the box so the region stays visible, clamped to the frame so it stays drawn.
    width = line_width(image.size)
    outer = (
        max(box[0] - width, 0),
        max(box[1] - width, 0),
        min(box[2] - 1 + width, image.width - 1),
        min(box[3] - 1 + width, image.height - 1),
    )
    ImageDraw.Draw(image).rectangle(outer, outline=MARK_COLOR, width=width)
    return image


def _paint(image: Image.Image, where: np.ndarray, opacity: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)  # a new, writable array
    pixels[where] = (1 - opacity) * pixels[where] + opacity * np.asarray(MARK_COLOR, dtype=np.float32)
    return Image.fromarray(np.rint(pixels).astype(np.uint8), mode="RGB")


def draw_contour(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """RGB copy of ``image`` with the outline of ``mask`` (bool [H, W]) drawn thick in red.

    ViP-LLaVA's mask contour: the 1-px boundary drawn again shifted by up to +-``line_width``.
    """
    return _paint(image.convert("RGB"), dilate_mask(mask_to_contour(mask), line_width(image.size)), 1.0)


def _render_contour(image: Image.Image, mask: np.ndarray, box: Box) -> Image.Image:
    return draw_contour(image, mask)


def _render_overlay(image: Image.Image, mask: np.ndarray, box: Box) -> Image.Image:
    return _paint(image, mask, OVERLAY_OPACITY)


def _render_crop(image: Image.Image, mask: np.ndarray, box: Box) -> Image.Image:
    return image.crop(crop_box(box, image.size))


_RENDERERS: dict[str, Callable[[Image.Image, np.ndarray, Box], Image.Image]] = {
    "mask": _render_mask,
    "bbox": _render_bbox,
    "bbox_text": _render_unchanged,
    "contour": _render_contour,
    "overlay": _render_overlay,
    "crop": _render_crop,
}


def region_phrase(style: str, box: Box, size: tuple[int, int]) -> str:
    """How ``style`` names the region whose pixel box is ``box`` in an image of ``size`` (width, height)."""
    coords = ", ".join(f"{v:.3f}" for v in normalized_box(box, size))
    return REGION_PHRASES[style].format(box=f"[{coords}]")


def render_visual_prompt(
    image: Image.Image, mask: np.ndarray | None, style: str, prompt: str
) -> tuple[Image.Image, str]:
    """The image and prompt to give a model for the region ``mask`` shown in ``style``.

    ``mask`` is a bool [H, W] array or any form ``masks.load_mask`` accepts; ``mask=None``
    (whole-image tasks) returns the image and prompt unchanged. The input image is never modified.
    """
    if style not in _RENDERERS:
        raise ValueError(
            f"unknown visual prompt style {style!r}; expected one of {', '.join(VISUAL_PROMPT_STYLES)}"
        )
    if mask is None:
        return image, prompt
    mask = load_mask(mask, image.height, image.width)
    box = mask_to_box(mask)
    rendered = _RENDERERS[style](image.convert("RGB"), mask, box)
    phrase = region_phrase(style, box, image.size)
    if DEFAULT_REGION in prompt:
        prompt = prompt.replace(DEFAULT_REGION, phrase)
    elif style != "mask":
        prompt = f"{prompt} Look at {phrase}."
    return rendered, prompt


def demo_scene() -> tuple[Image.Image, np.ndarray]:
    """A drawn 384x288 scene (sky, grass, sun, tree, house) and the mask of the house's arched door."""
    width, height = 384, 288
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = (1 - rows) * np.array([110, 170, 235], np.float32) + rows * np.array([200, 225, 250], np.float32)
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 200, width, height), fill=(90, 160, 70))
    draw.ellipse((300, 24, 350, 74), fill=(250, 210, 60))
    draw.rectangle((40, 110, 70, 215), fill=(110, 75, 40))
    draw.ellipse((10, 50, 100, 140), fill=(40, 120, 50))
    draw.polygon([150, 130, 270, 130, 270, 230, 150, 230], fill=(210, 190, 160))
    draw.polygon([140, 132, 210, 80, 280, 132], fill=(160, 60, 50))
    angles = np.linspace(0.0, np.pi, 13)
    arch = np.stack([208 + 16 * np.cos(angles), 180 - 16 * np.sin(angles)], axis=1).ravel().tolist()
    door = [224.0, 230.0, *arch, 192.0, 230.0]
    draw.polygon(door, fill=(90, 60, 40))
    return image, polygon_to_mask([door], height, width)


def write_demo(out_dir: str | Path) -> list[Path]:
    """Write ``{style}.png`` for every style and ``prompts.txt`` (the prompt per style) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image, mask = demo_scene()
    prompt = task_prompt("rdc")
    written, lines = [], []
    for style in VISUAL_PROMPT_STYLES:
        rendered, styled_prompt = render_visual_prompt(image, mask, style, prompt)
        path = out_dir / f"{style}.png"
        rendered.save(path, optimize=True)
        written.append(path)
        lines.append(f"{style}: {styled_prompt}")
    (out_dir / "prompts.txt").write_text("\n".join(lines) + "\n")
    logger.info("wrote %d visual prompt examples to %s", len(written), out_dir)
    return written


if __name__ == "__main__":  # ``python -m finecaption_plugin.visual_prompts --demo OUTDIR``: the CLI's flags
    from finecaption_plugin.cli import visual_prompts_demo

    raise SystemExit(visual_prompts_demo())
