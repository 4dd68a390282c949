"""Qualitative galleries: predictions beside their references, with the region outlined.

``write_gallery`` writes ``index.html`` (one card per sample: image with the region's outline,
prediction, references, scores), the images as PNG files in ``images/``, and ``gallery.png``, a
contact sheet of the first samples with their id, prediction and first reference under each.
"""

from __future__ import annotations

import html
import itertools
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .masks import MaskError, load_mask
from .visual_prompts import draw_contour

logger = logging.getLogger(__name__)

MAX_SAMPLES = 50
THUMBNAIL_SIZE = 448
SHEET_COLUMNS = 4
SHEET_TILE = 256
SHEET_PAD = 8
SHEET_FONT_SIZE = 12
SHEET_TEXT_LINES = 6

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
.card {{ display: flex; gap: 1em; background: #fff; border: 1px solid #ddd; padding: .8em; margin: .8em 0; }}
.card img {{ max-width: {thumb}px; height: auto; }}
.id {{ color: #666; font-size: .9em; }}
.prediction {{ font-weight: bold; }}
.card.right {{ border-left: 6px solid #2a8a2a; }} .card.wrong {{ border-left: 6px solid #c62828; }}
.verdict.right {{ color: #2a8a2a; }} .verdict.wrong {{ color: #c62828; }}
table {{ border-collapse: collapse; }} td {{ padding: 0 .6em 0 0; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{count} samples. <a href="gallery.png">Contact sheet</a>.</p>
{sections}
</body>
</html>
"""


def _load_sample(sample: Mapping[str, Any], index: int, root: Path | None) -> Image.Image:
    """The sample's image with its region outlined, thumbnailed to ``THUMBNAIL_SIZE``."""
    where = f"sample {index} ('id' {sample.get('id')!r})"
    image = sample.get("image")
    if isinstance(image, (str, Path)):
        path = Path(image) if root is None or Path(image).is_absolute() else root / image
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as err:
            raise ValueError(f"{where}: field 'image': cannot read {path}: {err}") from None
    elif not isinstance(image, Image.Image):
        raise ValueError(
            f"{where}: field 'image': expected a PIL image or a path, got {type(image).__name__}"
        )
    image = image.convert("RGB")
    mask = None
    if sample.get("mask") is not None:
        try:
            mask = load_mask(sample["mask"], image.height, image.width, root=root)
        except MaskError as err:
            raise MaskError(f"{where}: field 'mask': {err}") from None
    if max(image.size) < THUMBNAIL_SIZE:  # small images are shown large, the outline drawn at the shown size
        scale = THUMBNAIL_SIZE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.Resampling.NEAREST))
    if mask is not None:
        image = draw_contour(image, mask)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return image


def _references(sample: Mapping[str, Any]) -> list[str]:
    references = sample.get("references") or []
    return [references] if isinstance(references, str) else [str(r) for r in references]


def _format_score(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (float, np.floating)) else str(value)


def _verdict_text(verdict: Mapping[str, Any]) -> str:
    """"right: red" or "wrong: says blue, is red" for a sample's attribute verdict."""
    if verdict["correct"]:
        return f"right {verdict['attribute']}: {verdict['truth']}"
    stated = verdict["stated"] or "no value"
    return f"wrong {verdict['attribute']}: says {stated}, is {verdict['truth']}"


def _card(sample: Mapping[str, Any], image_path: str) -> str:
    esc = html.escape
    verdict = sample.get("verdict")
    mark = "" if not verdict else " right" if verdict["correct"] else " wrong"
    verdict_line = (
        f'<p class="verdict{mark}">{"&#10003;" if verdict["correct"] else "&#10007;"} {esc(_verdict_text(verdict))}</p>'
        if verdict
        else ""
    )
    references = "".join(f"<li>{esc(r)}</li>" for r in _references(sample))
    scores = sample.get("scores") or {}
    score_rows = "".join(
        f"<tr><td>{esc(str(k))}</td><td>{esc(_format_score(v))}</td></tr>" for k, v in scores.items()
    )
    return (
        f'<div class="card{mark}"><img src="{esc(image_path)}" alt="{esc(str(sample.get("id")))}">'
        f'<div><div class="id">{esc(str(sample.get("id")))}</div>'
        f'<p class="prediction">{esc(str(sample.get("prediction", "")))}</p>'
        + verdict_line
        +         f"<div>References:<ol>{references}</ol></div>"
        + (f"<table>{score_rows}</table>" if score_rows else "")
        + "</div></div>"
    )


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (long words are cut)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while font.getlength(word) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def _clip(lines: list[str], count: int) -> list[str]:
    """The first ``count`` lines, the last marked with " ..." when lines were cut."""
    if len(lines) <= count:
        return lines
    return lines[: count - 1] + [lines[count - 1].rstrip() + " ..."]


def contact_sheet(tiles: list[tuple[Image.Image, str, str | None]]) -> Image.Image:
    """A grid of ``(image, caption, reference)`` tiles, ``SHEET_COLUMNS`` per row, text under each image.

    Images are fitted in ``SHEET_TILE`` px; the reference gets up to 2 of the ``SHEET_TEXT_LINES``
    text lines, the caption the rest.
    """
    font = ImageFont.load_default(size=SHEET_FONT_SIZE)
    line_height = SHEET_FONT_SIZE + 3
    columns = min(len(tiles), SHEET_COLUMNS)
    rows = math.ceil(len(tiles) / SHEET_COLUMNS)
    cell_w = SHEET_TILE + SHEET_PAD
    cell_h = SHEET_TILE + SHEET_TEXT_LINES * line_height + SHEET_PAD
    sheet = Image.new("RGB", (columns * cell_w + SHEET_PAD, rows * cell_h + SHEET_PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (image, caption, reference) in enumerate(tiles):
        x = SHEET_PAD + (index % SHEET_COLUMNS) * cell_w
        y = SHEET_PAD + (index // SHEET_COLUMNS) * cell_h
        tile = image.copy()
        tile.thumbnail((SHEET_TILE, SHEET_TILE), Image.Resampling.LANCZOS)
        # bottom-aligned, so the text sits right under the image
        sheet.paste(tile, (x + (SHEET_TILE - tile.width) // 2, y + SHEET_TILE - tile.height))
        reference_lines = _clip(_wrap(f"ref: {reference}", font, SHEET_TILE), 2) if reference else []
        caption_lines = _clip(_wrap(caption, font, SHEET_TILE), SHEET_TEXT_LINES - len(reference_lines))
        for number, line in enumerate(caption_lines + reference_lines):
            color = "black" if number < len(caption_lines) else "dimgray"
            if number == 0 and caption.startswith(("[right]", "[wrong]")):
                color = "forestgreen" if caption.startswith("[right]") else "firebrick"
            draw.text((x, y + SHEET_TILE + number * line_height), line, fill=color, font=font)
    return sheet


def write_gallery(
    samples: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    title: str,
    max_samples: int = MAX_SAMPLES,
    sheet_samples: int = 16,
    root: str | Path | None = None,
) -> Path:
    """Write the gallery of the first ``max_samples`` samples into ``out_dir``; returns ``index.html``'s path.

    Each sample is a dict ``{"id", "image": PIL image or path (relative to root), "mask": any form
    of ``masks.load_mask`` or None, "prediction", "references": list of str, "scores"?: {name: value},
    "group"?}``. Samples are shown by group, groups in order of first appearance. ``gallery.png``
    holds the first ``sheet_samples`` of them.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    root = Path(root) if root is not None else None
    groups: dict[Any, list[str]] = {}
    tiles: list[tuple[Image.Image, str]] = []
    chosen = list(itertools.islice(samples, max_samples))
    for index, sample in enumerate(tqdm(chosen, desc="gallery", unit="sample")):
        image = _load_sample(sample, index, root)
        image_path = f"images/{index:04d}.png"
        image.save(out_dir / image_path)
        groups.setdefault(sample.get("group"), []).append(_card(sample, image_path))
        if index < sheet_samples:
            references = _references(sample)
            verdict = sample.get("verdict")
            mark = "" if not verdict else "[right] " if verdict["correct"] else "[wrong] "
            caption = f"{mark}[{sample.get('id')}] {sample.get('prediction', '')}"
            tiles.append((image, caption, references[0] if references else None))
    sections = "\n".join(
        (f"<h2>{html.escape(str(group))}</h2>\n" if group is not None else "") + "\n".join(cards)
        for group, cards in groups.items()
    )
    page = out_dir / "index.html"
    page.write_text(
        _PAGE.format(title=html.escape(title), thumb=THUMBNAIL_SIZE, count=len(chosen), sections=sections),
        encoding="utf-8",
    )
    if tiles:
        contact_sheet(tiles).save(out_dir / "gallery.png")
    logger.info("wrote a gallery of %d samples to %s", len(chosen), page)
    return page
