"""The CompositionCap record: its fields, what makes a caption, mask and image valid, reading and converting files.

One flat record per line of ``compositioncap_test.jsonl`` (evaluation) or of a training file::

    {"id": "e12_color",           # unique in the file
     "image": "images/0001.jpg",  # relative to the data folder
     "height": 768, "width": 1024,
     "mask": "H4sIAAAA...",       # any form of masks.load_mask; CompositionCap's base64(gzip(uint8 H*W)); null: global
     "task": "aarc",              # "aarc" | "rdc" | "global"
     "attribute": "color",        # "aarc" only
     "captions": ["The car is a deep red ..."]}

The rules, used by evaluation (``compositioncap_data``), training (``data``) and ``finecaption score``
(``metrics``) alike: a caption is a string that is not empty after ``strip()`` (``is_caption``); a mask decodes
to the image's size and is not empty (``masks.load_mask``); an image decodes in full (``image_size``).
``read_records`` reads a JSONL or JSON file with line numbers; ``open_image`` opens an image as RGB;
``flatten_image``/``convert_nested`` turn the per-image nested form into flat records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

logger = logging.getLogger(__name__)

REQUIRED_FIELDS: tuple[str, ...] = ("id", "image", "height", "width", "task", "captions")


class CompositionCapError(ValueError):
    """A file of records, or one of its records, is unusable (the message names the line or record and field)."""


def where(index: int, record: Any) -> str:
    """How errors name a record: its position (from 0) and id."""
    record_id = record.get("id") if isinstance(record, Mapping) else None
    return f"record {index} ('id' {record_id!r})"


def is_caption(text: object) -> bool:
    """The one rule for a caption (reference or training target): a string not empty after ``strip()``."""
    return isinstance(text, str) and bool(text.strip())


def are_captions(captions: object) -> bool:
    """A non-empty list of captions (``is_caption`` each)."""
    return isinstance(captions, list) and bool(captions) and all(is_caption(c) for c in captions)


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, record)`` of each object of a JSONL file (blank lines skipped) or a JSON list (``.json``).

    A JSON list's records carry the line each starts on. Raises ``CompositionCapError`` naming the line for
    text that is not JSON or a value that is not an object; ``OSError`` when the file cannot be read.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise CompositionCapError(
            f"line {line}, column {column}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8"
        ) from None
    if path.suffix == ".json" or (path.suffix != ".jsonl" and text.lstrip().startswith("[")):
        return _read_json_list(text)
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CompositionCapError(f"line {line_number}, column {error.colno}: not JSON ({error.msg})") from None
        records.append((line_number, _object(line_number, record)))
    return records


def _read_json_list(text: str) -> list[tuple[int, dict]]:
    decoder = json.JSONDecoder()
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        hint = " (a .json file holds one JSON list; JSON lines go in .jsonl)" if error.msg == "Extra data" else ""
        raise CompositionCapError(f"line {error.lineno}, column {error.colno}: not JSON ({error.msg}){hint}") from None
    if not isinstance(values, list):
        raise CompositionCapError(f"expected a JSON list of records, got {type(values).__name__}")
    # Line of each element: decode them one by one from the text (values are already known to be valid).
    # Lines are counted from the previous element on: counting from the start each time is quadratic.
    records, position = [], text.index("[") + 1
    line_number, counted = text.count("\n", 0, position) + 1, position
    for value in values:
        while text[position] in " \t\r\n,":
            position += 1
        line_number += text.count("\n", counted, position)
        counted = position
        _, position = decoder.raw_decode(text, position)
        records.append((line_number, _object(line_number, value)))
    return records


def _object(line_number: int, value: Any) -> dict:
    if not isinstance(value, dict):
        raise CompositionCapError(f"line {line_number}: expected a JSON object, got {type(value).__name__}")
    return value


@contextmanager
def strict_image_loading() -> Iterator[None]:
    """Truncated images raise meanwhile (lmms-eval sets ``LOAD_TRUNCATED_IMAGES`` process-wide, which would
    grey-fill a cut-off file silently)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


class ImageError(ValueError):
    """An image file that cannot be used: unreadable, truncated, over the pixel limit or of the wrong size."""


@contextmanager
def _checked_image(path: str | Path, expected: tuple[int, int] | None = None) -> Iterator[Image.Image]:
    """The image at ``path`` opened (header read, no pixel decoded), its size checked against the pixel limit
    (``masks.max_pixels``) and ``expected`` ``(width, height)``; errors are ``ImageError``."""
    from .masks import MaskError, check_pixels

    try:
        with Image.open(path) as image:
            try:
                check_pixels(image.height, image.width, f"image {path}")
            except MaskError as error:
                raise ImageError(str(error)) from None
            if expected is not None and image.size != tuple(expected):
                raise ImageError(
                    f"{path} is {image.width}x{image.height} (width x height), the record says "
                    f"{expected[0]}x{expected[1]}"
                )
            yield image
    except Image.DecompressionBombError as error:
        raise ImageError(f"image {path} is too large: {error}") from None
    except (OSError, SyntaxError) as error:
        raise ImageError(f"{path} is not a readable image ({error})") from None


def image_size(path: str | Path, expected: tuple[int, int] | None = None) -> tuple[int, int]:
    """The rule for a valid image: ``(width, height)`` of the file, decoded in full (truncated or corrupt raises
    ``ImageError``); the header's size is checked against the pixel limit and ``expected`` before decoding."""
    with strict_image_loading(), _checked_image(path, expected) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"{path} is not a readable image ({error})") from None
        return image.size


def open_image(path: str | Path, expected: tuple[int, int] | None = None) -> Image.Image:
    """The image at ``path`` as RGB (loaded, the file closed), checked as ``image_size`` checks it before decoding.

    16-bit greyscale is scaled to 8 bits (Pillow's RGB conversion would clip it, turning it white).
    """
    with _checked_image(path, expected) as image:
        try:
            if image.mode in ("I", "I;16", "I;16B", "I;16L"):
                return Image.fromarray((np.asarray(image, dtype=np.uint32) // 257).astype(np.uint8)).convert("RGB")
            return image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"{path} is not a readable image ({error})") from None


# -- the per-image nested form ------------------------------------------------------------------------


def flatten_image(index: int, image: Mapping[str, Any]) -> list[dict]:
    """The flat records of one per-image record of the nested form::

        {"id"?: str, "image", "height", "width", "global_captions"?: [str],
         "entities": [{"id", "mask", "dense_captions"?: [str], "attributes"?: {name: str | [str]}}]}

    giving one "global" record, one "rdc" record per entity with dense captions and one "aarc"
    record per entity attribute; ids are ``<image id>_<entity id>_<attribute>`` (``_dense``, ``_global``).
    """
    for field in ("image", "height", "width"):
        if image.get(field) is None:
            raise CompositionCapError(f"image record {index}: field {field!r}: missing")
    if not isinstance(image["image"], str):
        raise CompositionCapError(
            f"image record {index}: field 'image': expected a path string, got {type(image['image']).__name__}"
        )
    image_id = image.get("id", Path(image["image"]).stem)
    name = f"image record {index} ('id' {image_id!r})"
    _expect(name, "entities", image.get("entities"), list, "a list of entity objects")
    _expect(name, "global_captions", image.get("global_captions"), list, "a list of captions")
    base = {"image": image["image"], "height": image["height"], "width": image["width"]}
    records = []
    for position, entity in enumerate(image.get("entities") or []):
        _expect(name, f"entities[{position}]", entity, dict, "an object with 'id' and 'mask'")
        if entity.get("id") is None or entity.get("mask") is None:
            raise CompositionCapError(f"{name}: field 'entities[{position}]': needs 'id' and 'mask'")
        _expect(name, f"entities[{position}].dense_captions", entity.get("dense_captions"), list, "a list of captions")
        _expect(name, f"entities[{position}].attributes", entity.get("attributes"), dict, "an object {name: caption}")
        for attribute, captions in (entity.get("attributes") or {}).items():
            if not isinstance(captions, (str, list)):
                raise CompositionCapError(
                    f"{name}: field 'entities[{position}].attributes.{attribute}': expected a caption or a list "
                    f"of captions, got {type(captions).__name__}"
                )
        region = {**base, "mask": entity["mask"]}
        prefix = f"{image_id}_{entity['id']}"
        if entity.get("dense_captions"):
            records.append(
                {"id": f"{prefix}_dense", **region, "task": "rdc", "attribute": None,
                 "captions": list(entity["dense_captions"])}
            )  # fmt: skip
        for attribute, captions in (entity.get("attributes") or {}).items():
            records.append(
                {"id": f"{prefix}_{attribute}", **region, "task": "aarc", "attribute": attribute,
                 "captions": [captions] if isinstance(captions, str) else list(captions)}
            )  # fmt: skip
    if image.get("global_captions"):
        records.append(
            {"id": f"{image_id}_global", **base, "mask": None, "task": "global", "attribute": None,
             "captions": list(image["global_captions"])}
        )  # fmt: skip
    return records


def _expect(name: str, field: str, value: Any, kind: type, what: str) -> None:
    if value is not None and not isinstance(value, kind):
        raise CompositionCapError(f"{name}: field {field!r}: expected {what}, got {type(value).__name__}")


def convert_nested(source: str | Path, target: str | Path) -> int:
    """Flatten a nested file (a JSON list or JSON lines of per-image records) into ``target`` (JSONL)."""
    numbered = read_records(source)
    images = [image for _, image in numbered]
    records = []
    for index, (line_number, image) in enumerate(numbered):
        try:
            records.extend(flatten_image(index, image))
        except CompositionCapError as error:
            raise CompositionCapError(f"line {line_number}: {error}") from None
    Path(target).write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    logger.info("wrote %d records of %d images to %s", len(records), len(images), target)
    return len(records)
