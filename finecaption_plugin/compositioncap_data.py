"""The CompositionCap data folder: where it is, and every record checked before the model runs.

``$COMPOSITIONCAP_ROOT`` holds ``compositioncap_test.jsonl`` (records of ``records``) and the images. A
record is checked for its fields, its image (present, decodable in full, of the stated size) and its mask
(decodable, of the image's size, non-empty); errors name the record (its line, counting from 0), its id
and the field. ``doc_image``/``doc_mask`` give a checked record's image and region.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .masks import MaskError, check_pixels, inside_folder, is_mask_path, load_mask
from .records import REQUIRED_FIELDS, CompositionCapError, are_captions, image_size, open_image, where

ROOT_ENV = "COMPOSITIONCAP_ROOT"
TEST_FILE = "compositioncap_test.jsonl"
ALLOW_OUTSIDE_ENV = "FINECAPTION_ALLOW_OUTSIDE_DATA_FOLDER"

__all__ = [
    "ALLOW_OUTSIDE_ENV",
    "ROOT_ENV",
    "TEST_FILE",
    "CompositionCapError",
    "check_record",
    "data_root",
    "doc_image",
    "doc_mask",
]


def data_root() -> Path:
    """The folder ``$COMPOSITIONCAP_ROOT``; a clear error when it is unset or missing."""
    value = os.environ.get(ROOT_ENV)
    if not value:
        raise CompositionCapError(f"{ROOT_ENV} is not set: point it at the folder holding {TEST_FILE} and the images")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise CompositionCapError(f"{ROOT_ENV}={value!r} is not a folder")
    return root


def test_file() -> str:
    """Path of ``compositioncap_test.jsonl`` in the data folder (for the YAML's ``data_files``); it must hold a
    record (an empty file would reach lmms-eval's loader as a bare ``StopIteration``)."""
    path = data_root() / TEST_FILE
    if not path.is_file():
        raise CompositionCapError(f"{path} does not exist: {ROOT_ENV} must hold {TEST_FILE}")
    with path.open("rb") as file:
        if not any(line.strip() for line in file):
            raise CompositionCapError(f"{path} holds no record: it is empty (one JSON record a line expected)")
    return str(path)


def allow_outside() -> bool:
    """Whether records may name images and masks outside the data folder: ``$FINECAPTION_ALLOW_OUTSIDE_DATA_FOLDER``
    set to 1 (or true/yes). Without it a path that leaves the folder (``..``, absolute, a symlink) is an error."""
    return os.environ.get(ALLOW_OUTSIDE_ENV, "").strip().lower() in ("1", "true", "yes")


def data_path(value: Any, root: Path, field: str) -> Path:
    """The file a record's ``field`` names, relative to ``root``; ``MaskError`` when it leaves ``root``
    (unless ``allow_outside``)."""
    if allow_outside():
        return root / value
    return inside_folder(value, root, field)




def check_record(
    index: int, record: Mapping[str, Any], root: Path, image_sizes: dict[Path, tuple[int, int]] | None = None
) -> None:
    """Raise ``CompositionCapError`` naming record ``index`` and the field when ``record`` is unusable.

    ``record["task"]`` must be one of ``prompts.TASKS`` (``select_docs`` checks it for every record first).
    ``image_sizes`` remembers the images already decoded, which records of one image share.
    """

    def fail(field: str, problem: str) -> CompositionCapError:
        return CompositionCapError(f"{where(index, record)}: field {field!r}: {problem}")

    for field in REQUIRED_FIELDS:
        if record.get(field) is None:
            raise fail(field, "missing")
    task = record["task"]
    height, width = record["height"], record["width"]
    for field, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise fail(field, f"{value!r} is not a positive integer")
    if not are_captions(record["captions"]):
        raise fail("captions", "must be a non-empty list of non-empty strings")
    if task == "aarc" and not record.get("attribute"):
        raise fail("attribute", "an 'aarc' record needs the attribute its captions describe")
    try:
        check_pixels(height, width, "the record's image")
    except MaskError as error:
        raise fail("height", str(error)) from None
    if not isinstance(record["image"], str):
        raise fail("image", f"expected a path string, got {type(record['image']).__name__}")
    try:
        path = data_path(record["image"], root, "image")
    except MaskError as error:
        raise fail("image", str(error)) from None
    if not path.is_file():
        raise fail("image", f"{path} does not exist")
    image_sizes = {} if image_sizes is None else image_sizes
    if path not in image_sizes:
        try:
            # The header's size is checked (pixel limit, the record's size) before any pixel is decoded.
            image_sizes[path] = image_size(path, expected=(width, height))
        except (OSError, SyntaxError, ValueError) as error:
            raise fail("image", str(error)) from None
    size = image_sizes[path]
    if size != (width, height):
        raise fail("image", f"{path} is {size[0]}x{size[1]} (width x height), the record says {width}x{height}")
    if task == "global":
        if record.get("mask") is not None:
            raise fail("mask", "a 'global' record describes the whole image: its mask must be null")
    elif record.get("mask") is None:
        raise fail("mask", f"a {task!r} record needs the region mask")
    else:
        try:
            if isinstance(record["mask"], str) and is_mask_path(record["mask"]):
                data_path(record["mask"], root, "mask")
            _load_mask(record["mask"], height, width, root)
        except MaskError as error:
            raise fail("mask", str(error)) from None


def _load_mask(value: Any, height: int, width: int, root: Path) -> np.ndarray:
    """A record's mask, bool [height, width]; the string forms are cached (read-only arrays), since the
    check, the prompt and the visual of a record, and the records of one region, decode the same mask."""
    if isinstance(value, str):
        return _cached_mask(value, height, width, root)
    return load_mask(value, height, width, root=root)


@functools.lru_cache(maxsize=32)  # 32 masks of 1024x1024: 32 MB
def _cached_mask(value: str, height: int, width: int, root: Path) -> np.ndarray:
    mask = load_mask(value, height, width, root=root)
    mask.flags.writeable = False
    return mask


def doc_mask(doc: Mapping[str, Any]) -> np.ndarray | None:
    """The region of a record, bool [height, width] (read-only); None for a whole-image ("global") record."""
    if doc.get("mask") is None:
        return None
    return _load_mask(doc["mask"], doc["height"], doc["width"], data_root())


def doc_image(doc: Mapping[str, Any]) -> Image.Image:
    """The record's image, RGB."""
    return open_image(data_root() / doc["image"])
