"""Caption the regions of a user's own images: the library behind `finecaption caption`.

One image with several masks (each in any form `masks.load_mask` reads: a PNG path, a CompositionCap
string, a COCO RLE or polygon, a box), or a regions file: a CompositionCap JSONL (records with
`image`, `mask`, `task`, `attribute`) or a COCO-style annotation file (`images` + `annotations` with
`segmentation` or `bbox`). Every region of one image is captioned through
`region_captioning.caption_regions`, which encodes the image once and shares the prompt prefix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .masks import MaskError, load_mask
from .prompts import task_prompt

logger = logging.getLogger(__name__)


class RegionsFileError(ValueError):
    """A regions file, or one of its records, that cannot be captioned; the message names it."""


@dataclass(frozen=True)
class Region:
    """One region to caption: its id, image path, mask (None: the whole image) and instruction."""

    id: Any
    image: Path
    mask: np.ndarray | None
    prompt: str


def parse_mask_argument(value: str, height: int, width: int) -> np.ndarray:
    """A `--mask` value -> bool `[height, width]`: inline JSON (RLE dict, polygon list, `{"bbox": ...}`) or a
    path / CompositionCap string as `load_mask` reads it."""
    text = value.strip()
    if text[:1] in "{[":
        try:
            decoded: Any = json.loads(text)
        except json.JSONDecodeError as error:
            raise MaskError(f"--mask {value[:40]!r}: not valid JSON ({error.msg})") from None
        return load_mask(decoded, height, width)
    return load_mask(value, height, width)


def instruction(prompt: str | None, task: str | None, attribute: str | None) -> str:
    """The question asked of every region: `prompt` as given, else the task's instruction."""
    if prompt is not None:
        return prompt
    return task_prompt(task or "rdc", attribute)


def _regions_from_compositioncap(path: Path, records: Sequence[dict], root: Path) -> Iterator[Region]:
    for index, record in enumerate(records):
        where = f"{path}: record {index} ('id' {record.get('id')!r})"
        try:
            prompt = task_prompt(record.get("task") or "rdc", record.get("attribute"))
        except ValueError as error:
            raise RegionsFileError(f"{where}: field 'task': {error}") from None
        image = root / str(record.get("image"))
        mask = record.get("mask")
        if mask is not None:
            try:
                mask = load_mask(mask, record.get("height"), record.get("width"), root=root)
            except MaskError as error:
                raise RegionsFileError(f"{where}: field 'mask': {error}") from None
        yield Region(record.get("id", index), image, mask, prompt)


def _regions_from_coco(path: Path, data: dict, root: Path, prompt: str) -> Iterator[Region]:
    images = {image.get("id"): image for image in data.get("images", [])}
    for index, annotation in enumerate(data.get("annotations", [])):
        where = f"{path}: annotation {index} ('id' {annotation.get('id')!r})"
        image = images.get(annotation.get("image_id"))
        if image is None:
            raise RegionsFileError(f"{where}: field 'image_id': no image with id {annotation.get('image_id')!r}")
        height, width = image.get("height"), image.get("width")
        try:
            if annotation.get("segmentation"):
                mask = load_mask(annotation["segmentation"], height, width)
            else:
                x, y, w, h = annotation["bbox"]
                mask = load_mask({"bbox": [x, y, x + w, y + h]}, height, width)
        except (MaskError, KeyError, TypeError, ValueError) as error:
            raise RegionsFileError(f"{where}: field 'segmentation'/'bbox': {error}") from None
        yield Region(annotation.get("id", index), root / str(image.get("file_name")), mask, prompt)


def read_regions(path: str | Path, image_folder: str | Path | None = None, prompt: str | None = None) -> list[Region]:
    """The regions of a CompositionCap JSONL or a COCO-style JSON; image paths are relative to `image_folder`
    (default: the file's folder). `prompt` replaces each record's own instruction (COCO regions default to the
    dense-caption instruction)."""
    from .records import CompositionCapError, read_records

    path = Path(path)
    root = Path(image_folder) if image_folder is not None else path.parent
    if path.suffix == ".jsonl":
        try:
            records = [record for _, record in read_records(path)]
        except (OSError, UnicodeDecodeError, CompositionCapError) as error:
            raise RegionsFileError(f"{path}: {error}") from None
        return [_with_prompt(region, prompt) for region in _regions_from_compositioncap(path, records, root)]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RegionsFileError(f"{path}: cannot read it as JSON: {error}") from None
    if isinstance(data, dict) and "annotations" in data:
        return list(_regions_from_coco(path, data, root, prompt or task_prompt("rdc")))
    if isinstance(data, list) and all(isinstance(record, dict) for record in data):
        return [_with_prompt(region, prompt) for region in _regions_from_compositioncap(path, data, root)]
    raise RegionsFileError(f"{path}: expected CompositionCap records or a COCO file with 'annotations'")


def _with_prompt(region: Region, prompt: str | None) -> Region:
    return region if prompt is None else Region(region.id, region.image, region.mask, prompt)


def group_by_image(regions: Sequence[Region]) -> dict[Path, list[int]]:
    """Indices of `regions` per image, in first-seen order: each image is opened and encoded once."""
    groups: dict[Path, list[int]] = {}
    for index, region in enumerate(regions):
        groups.setdefault(region.image, []).append(index)
    return groups


def load_captioner(model: str | Path | None = None, dtype: str = "float32", device: str = "cpu", batch_size: int = 16):
    """A `RegionCaptioner` over the checkpoint at `model` (default: the shipped demo model)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .demo import demo_checkpoint
    from .region_captioning import RegionCaptioner

    path = Path(model) if model is not None else demo_checkpoint()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {path}: not a checkpoint folder (no config.json)")
    loaded = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    return RegionCaptioner(loaded, processor, batch_size=batch_size)


def caption_image(captioner, image: str | Path, masks: Sequence[str], prompt: str, **generate_kwargs) -> list[str]:
    """One caption per `--mask` value of `masks` (no mask: the whole image) of the image at `image`."""
    from .records import open_image

    picture = open_image(image)
    regions = [parse_mask_argument(value, picture.height, picture.width) for value in masks] or [None]
    return captioner.caption(picture, regions, prompt, **generate_kwargs)


def caption_file(captioner, regions: Sequence[Region], output: str | Path, **generate_kwargs) -> int:
    """Caption every region, image by image (each encoded once), into the JSONL `output` ({"id", "image",
    "prompt", "caption"} a line, in the regions' order within each image; written as each image is done)."""
    from tqdm.auto import tqdm

    from .records import open_image

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as lines, tqdm(total=len(regions), desc="captioning", unit="region") as bar:
        for image_path, indices in group_by_image(regions).items():
            picture = open_image(image_path)
            masks = [regions[index].mask for index in indices]
            prompts = [regions[index].prompt for index in indices]
            captions = captioner.caption(picture, masks, prompts, **generate_kwargs)
            for index, caption in zip(indices, captions, strict=True):
                region = regions[index]
                row = {"id": region.id, "image": str(image_path), "prompt": region.prompt, "caption": caption}
                lines.write(json.dumps(row, ensure_ascii=False) + "\n")
            lines.flush()
            bar.update(len(indices))
    return len(regions)
