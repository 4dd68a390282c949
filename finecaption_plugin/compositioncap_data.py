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

from .masks import MaskError, load_mask
from .records import REQUIRED_FIELDS, CompositionCapError, are_captions, image_size, open_image, where

ROOT_ENV = "COMPOSITIONCAP_ROOT"
TEST_FILE = "compositioncap_test.jsonl"

__all__ = ["ROOT_ENV", "TEST_FILE", "CompositionCapError", "check_record", "data_root", "doc_image", "doc_mask"]


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
    """Path of ``compositioncap_test.jsonl`` in the data folder (for the YAML's ``data_files``)."""
    path = data_root() / TEST_FILE
    if not path.is_file():
        raise CompositionCapError(f"{path} does not exist: {ROOT_ENV} must hold {TEST_FILE}")
    return str(path)




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
    path = root / record["image"]
    if not path.is_file():
        raise fail("image", f"{path} does not exist")
    image_sizes = {} if image_sizes is None else image_sizes
    if path not in image_sizes:
        try:
            image_sizes[path] = image_size(path)
        except (OSError, SyntaxError, ValueError) as error:
            raise fail("image", f"{path} is not a readable image ({error})") from None
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
