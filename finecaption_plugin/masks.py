"""Binary region masks: decode and encode every format FineCaption data comes in.

All decoders return a boolean ``np.ndarray`` of shape ``(height, width)``. Formats:

- CompositionCap: ``base64(gzip(raw uint8 height*width bytes))``, 0/1 or 0/255 (binarised ``> 0``);
- COCO RLE: ``{"size": [height, width], "counts": str | bytes | list[int]}`` (via pycocotools);
- COCO polygons: ``[[x0, y0, x1, y1, ...], ...]`` in pixel coordinates (via pycocotools);
- boxes ``(x0, y0, x1, y1)`` in pixel coordinates, ``x1``/``y1`` exclusive;
- PNG files and PIL images (any nonzero pixel is inside).

``load_mask`` dispatches on the value. Every bad input raises ``MaskError`` saying what was wrong;
callers add the record and field it came from.

Sizes are checked before anything is allocated: a mask (and an image, ``records``) may hold at most
``max_pixels()`` pixels (``MAX_PIXELS``, 8192 x 8192, or ``$FINECAPTION_MAX_PIXELS``); an RLE's own ``size`` is
checked against the expected size and that limit before it is decoded; a PNG's size is read from its header;
a polygon is clipped to a box around the image before it is rasterised (pycocotools' cost grows with the
coordinates: 1e8 takes minutes and gigabytes, 1e30 crashes it); a gzip stream must hold exactly one member.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import math
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

__all__ = [
    "MAX_PIXELS",
    "MaskError",
    "box_to_mask",
    "decode_compositioncap",
    "decode_rle",
    "dilate_mask",
    "encode_compositioncap",
    "encode_rle",
    "load_mask",
    "mask_to_box",
    "mask_to_contour",
    "max_pixels",
    "polygon_to_mask",
    "resize_mask",
]


class MaskError(ValueError):
    """A mask value that cannot be decoded, or decodes to an unusable mask."""


MAX_PIXELS = 8192 * 8192
MAX_PIXELS_ENV = "FINECAPTION_MAX_PIXELS"


def max_pixels() -> int:
    """The most pixels a mask or an image may have: ``$FINECAPTION_MAX_PIXELS``, else ``MAX_PIXELS`` (8192 x 8192).

    Checked from the sizes a value states (an RLE's ``size``, a PNG's or image's header, a record's height and
    width) before decoding, so a hostile value is refused before memory is allocated for it.
    """
    value = os.environ.get(MAX_PIXELS_ENV)
    if not value:
        return MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        raise MaskError(f"${MAX_PIXELS_ENV}={value!r} is not a whole number of pixels") from None
    if limit <= 0:
        raise MaskError(f"${MAX_PIXELS_ENV}={value!r} must be positive")
    return limit


def check_pixels(height: int, width: int, what: str = "mask") -> None:
    """Raise ``MaskError`` when ``height x width`` is over ``max_pixels()`` (before anything is decoded)."""
    limit = max_pixels()
    if height * width > limit:
        raise MaskError(
            f"{what} is {height}x{width} (height x width) = {height * width} pixels, over the limit of {limit} "
            f"(${MAX_PIXELS_ENV} raises it)"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_size(height: Any, width: Any) -> tuple[int, int]:
    if height is None or width is None:
        raise MaskError("this mask format needs the image height and width, and they were not given")
    if not all(_is_int(v) and v > 0 for v in (height, width)):
        raise MaskError(f"height and width must be positive integers, got height={height!r}, width={width!r}")
    check_pixels(int(height), int(width))
    return int(height), int(width)


def _check_shape(mask: np.ndarray, height: int | None, width: int | None) -> np.ndarray:
    if height is not None and mask.shape[0] != height or width is not None and mask.shape[1] != width:
        raise MaskError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} (height x width), "
            f"expected {height if height is not None else '*'}x{width if width is not None else '*'}"
        )
    return mask


def _as_bool(array: np.ndarray) -> np.ndarray:
    """Binarise a 2-D array (``> 0``); [H, W] -> bool [H, W]."""
    if array.ndim != 2:
        raise MaskError(f"a mask array must be 2-D (height, width), got shape {tuple(array.shape)}")
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise MaskError(f"a mask array must be boolean or numeric, got dtype {array.dtype}")
    return array > 0


# CompositionCap ---------------------------------------------------------------------------------


def decode_compositioncap(s: str | bytes, height: int, width: int) -> np.ndarray:
    """Decode a CompositionCap mask string, ``base64(gzip(uint8 bytes))`` -> bool [height, width]."""
    height, width = _check_size(height, width)
    expected = height * width
    try:
        data = base64.b64decode(s.strip(), validate=True)
    except (binascii.Error, ValueError, TypeError) as err:
        raise MaskError(f"bad base64 in CompositionCap mask: {err}") from None
    # Decompress at most one byte past the expected size, so a corrupt or hostile stream cannot
    # fill memory before the size check.
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = decompressor.decompress(data, expected + 1)
    except zlib.error as err:
        raise MaskError(f"bad gzip data in CompositionCap mask: {err}") from None
    if len(raw) > expected:
        raise MaskError(
            f"mask decodes to more than {expected} bytes, "
            f"expected height*width = {expected} (height={height}, width={width})"
        )
    if not decompressor.eof:
        raise MaskError("bad gzip data in CompositionCap mask: the stream is truncated")
    if decompressor.unused_data:
        # A second gzip member, or bytes appended to the stream: not what CompositionCap writes.
        raise MaskError(
            f"bad gzip data in CompositionCap mask: {len(decompressor.unused_data)} bytes follow the end of the "
            "gzip stream (a second member or trailing data)"
        )
    if len(raw) != expected:
        raise MaskError(
            f"mask decodes to {len(raw)} bytes, expected height*width = {expected} (height={height}, width={width})"
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width) > 0


def encode_compositioncap(mask: np.ndarray) -> str:
    """Encode a mask [H, W] as CompositionCap does (stored 0/1); deterministic (gzip mtime 0)."""
    raw = np.ascontiguousarray(_as_bool(np.asarray(mask)), dtype=np.uint8).tobytes()
    return base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")


# COCO RLE ---------------------------------------------------------------------------------------


def _coco_decode(rle: dict) -> np.ndarray:
    """pycocotools' decode of one validated compressed RLE -> bool [h, w]."""
    with warnings.catch_warnings():
        # pycocotools (2.0.11) warns on every decode under numpy 2 about its own __array__ signature.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return coco_mask.decode(rle) > 0


def _rle_string_counts(counts: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (needed to validate it before decoding)."""
    values: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position == len(counts):
                raise MaskError("bad RLE counts string: it ends in the middle of a number")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise MaskError(f"bad RLE counts string: invalid character {counts[position]!r}")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def decode_rle(rle: dict, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode a COCO RLE dict (compressed or uncompressed counts) -> bool [h, w].

    ``height``/``width``, when given, must match the RLE's ``size``.
    """
    try:
        size, counts = rle["size"], rle["counts"]
    except (KeyError, TypeError):
        raise MaskError("an RLE mask needs 'size': [height, width] and 'counts'") from None
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
        raise MaskError(f"an RLE mask's 'size' must be [height, width], two positive integers, got {size!r}")
    rle_height, rle_width = int(size[0]), int(size[1])
    if (height is not None and rle_height != height) or (width is not None and rle_width != width):
        raise MaskError(
            f"the RLE's 'size' is {rle_height}x{rle_width} (height x width), expected "
            f"{height if height is not None else '*'}x{width if width is not None else '*'}"
        )
    rle_height, rle_width = _check_size(rle_height, rle_width)
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise MaskError("bad RLE counts string: not ASCII") from None
    if isinstance(counts, str):
        runs = _rle_string_counts(counts)
        compressed = {"size": [rle_height, rle_width], "counts": counts.encode("ascii")}
    elif isinstance(counts, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in counts):
            raise MaskError("uncompressed RLE counts must be integers")
        runs = [int(v) for v in counts]
        compressed = None
    else:
        raise MaskError(f"RLE counts must be a string, bytes or a list, got {type(counts).__name__}")
    # pycocotools trusts the run lengths: a short total leaves pixels uninitialised.
    if any(v < 0 for v in runs):
        raise MaskError("bad RLE counts: negative run length")
    if sum(runs) != rle_height * rle_width:
        raise MaskError(
            f"RLE run lengths sum to {sum(runs)}, expected height*width = {rle_height * rle_width} "
            f"(height={rle_height}, width={rle_width})"
        )
    if compressed is None:
        compressed = coco_mask.frPyObjects({"size": [rle_height, rle_width], "counts": runs}, rle_height, rle_width)
    return _check_shape(_coco_decode(compressed), height, width)


def encode_rle(mask: np.ndarray) -> dict:
    """Encode a mask [H, W] as COCO compressed RLE, ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    mask = _as_bool(np.asarray(mask))
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# Polygons and boxes -----------------------------------------------------------------------------


def polygon_to_mask(polygons: Sequence, height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (or one flat list) -> bool [H, W]."""
    height, width = _check_size(height, width)
    if len(polygons) and not isinstance(polygons[0], (list, tuple, np.ndarray)):
        polygons = [polygons]
    if not len(polygons):
        raise MaskError("polygon list is empty")
    checked = []
    for index, polygon in enumerate(polygons):
        try:
            coords = [float(v) for v in polygon]
        except (TypeError, ValueError):
            raise MaskError(f"polygon {index} must be a flat list of numbers x0, y0, x1, y1, ...") from None
        if len(coords) < 6 or len(coords) % 2 or not all(math.isfinite(v) for v in coords):
            raise MaskError(
                f"polygon {index} must be a flat list of at least 3 finite (x, y) points, got {len(coords)} values"
            )
        checked.append(_clip_polygon(coords, height, width))
    checked = [coords for coords in checked if len(coords) >= 6]
    if not checked:  # every polygon lies outside the image
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects(checked, height, width)
    return _coco_decode(coco_mask.merge(rles))


def _clip_polygon(coords: list[float], height: int, width: int) -> list[float]:
    """The polygon cut to a box a margin around the image (Sutherland-Hodgman; the box is convex, so the cut is
    exactly the polygon's part inside it), unchanged when it already lies inside.

    pycocotools rasterises every edge at 5x resolution, whatever its length: huge coordinates cost time and
    memory in proportion (and crash it). The pixels inside the image are the same, up to pycocotools' rounding
    of the cut points to 1/5 px (the box reaches 8 image sides out, so that rounding barely tilts an edge).
    """
    margin = 8 * max(height, width)
    low_x, high_x, low_y, high_y = -margin, width + margin, -margin, height + margin
    xs, ys = coords[0::2], coords[1::2]
    if min(xs) >= low_x and max(xs) <= high_x and min(ys) >= low_y and max(ys) <= high_y:
        return coords
    points = list(zip(xs, ys, strict=True))
    for axis, bound, keep_below in ((0, low_x, False), (0, high_x, True), (1, low_y, False), (1, high_y, True)):
        if not points:
            break

        def inside(point, axis=axis, bound=bound, keep_below=keep_below):
            return point[axis] <= bound if keep_below else point[axis] >= bound

        clipped = []
        for index, current in enumerate(points):
            previous = points[index - 1]
            if inside(current) != inside(previous):
                # From the end nearer the bound: the far one may be 1e30 away, and the difference would vanish.
                near, far = sorted((previous, current), key=lambda point: abs(point[axis] - bound))
                slope = (far[1 - axis] - near[1 - axis]) / (far[axis] - near[axis])
                other = near[1 - axis] + (bound - near[axis]) * slope
                if not math.isfinite(other):
                    raise MaskError("polygon coordinates too large to cut to the image")
                clipped.append((bound, other) if axis == 0 else (other, bound))
            if inside(current):
                clipped.append(current)
        points = clipped
    return [value for point in points for value in point]


def box_to_mask(box_xyxy: Sequence[float], height: int, width: int) -> np.ndarray:
    """Mask of the pixels a box ``(x0, y0, x1, y1)`` touches (x1, y1 exclusive), clipped -> bool [H, W]."""
    height, width = _check_size(height, width)
    try:
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    except (TypeError, ValueError):
        raise MaskError(f"a box must be 4 numbers (x0, y0, x1, y1), got {box_xyxy!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        raise MaskError(f"a box (x0, y0, x1, y1) needs finite values with x1 > x0 and y1 > y0, got {box_xyxy!r}")
    mask = np.zeros((height, width), dtype=bool)
    rows = slice(max(math.floor(y0), 0), max(min(math.ceil(y1), height), 0))
    cols = slice(max(math.floor(x0), 0), max(min(math.ceil(x1), width), 0))
    mask[rows, cols] = True
    return mask


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(x0, y0, x1, y1)`` of a mask [H, W], x1/y1 exclusive; raises on an empty mask."""
    mask = _as_bool(np.asarray(mask))
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        raise MaskError("mask is empty")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# Morphology -------------------------------------------------------------------------------------


def _dilate(mask: np.ndarray, radius: int, outside: bool) -> np.ndarray:
    """Square dilation (Chebyshev radius) of a bool mask [H, W]; ``outside`` is the value beyond the edges.

    Separable running sums, so the cost does not grow with the radius.
    """
    out = mask
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        sums = np.cumsum(np.pad(out, pad, constant_values=outside), axis=axis, dtype=np.int32)
        upper = sums.take(np.arange(2 * radius + 1, sums.shape[axis]), axis=axis)
        lower = sums.take(np.arange(0, sums.shape[axis] - 2 * radius - 1), axis=axis)
        out = (upper - lower) > 0
    return out


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a mask [H, W] by ``radius`` pixels in every direction (square neighbourhood)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return _dilate(_as_bool(np.asarray(mask)), radius, outside=False)


def mask_to_contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner boundary band of a mask [H, W], ``width`` pixels thick -> bool [H, W].

    Pixels on the image edge count as boundary, so a region cut by the frame is outlined there too.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    mask = _as_bool(np.asarray(mask))
    eroded = ~_dilate(~mask, width, outside=True)
    return mask & ~eroded


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a mask [H, W] to ``size = (height, width)`` as a soft mask, float32 in [0, 1].

    Bilinear with antialiasing (PIL), as Alpha-CLIP resizes its alpha channel, so a thin region
    keeps a partial value instead of vanishing; ``> 0.5`` binarises again.
    """
    height, width = _check_size(*size)
    image = Image.fromarray(_as_bool(np.asarray(mask)).astype(np.float32), mode="F")
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(resized, 0.0, 1.0)


# Universal loader -------------------------------------------------------------------------------


GRAY_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F")


def _from_image(image: Image.Image) -> np.ndarray:
    check_pixels(image.height, image.width, "mask image")
    if image.mode in GRAY_MODES:
        # Palette images are read by index (an annotation PNG's index 0 is the background); 16-bit grey by value.
        return _as_bool(np.asarray(image))
    return np.asarray(image.convert("RGB")).any(axis=2)


def _sixteen_bit_colour(image: Image.Image) -> bool:
    """A 16-bit-per-channel colour PNG, which Pillow reads as 8 bits by dropping each value's low byte."""
    return any(str(tile[3] if len(tile) > 3 else "").split(";")[-1:] == ["16B"] for tile in image.tile) and (
        image.mode not in GRAY_MODES
    )


def _from_path(
    path: Path, root: str | Path | None, height: int | None = None, width: int | None = None, contain: bool = False
) -> np.ndarray:
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    if contain and root is not None:
        path = inside_folder(path, root, "mask")
    if not path.is_file():
        raise MaskError(f"mask file not found: {path}")
    try:
        with Image.open(path) as image:
            # The header's size, before any pixel is decoded.
            check_pixels(image.height, image.width, f"mask image {path}")
            _check_shape(np.empty((image.height, image.width, 0), bool), height, width)
            if _sixteen_bit_colour(image):
                raise MaskError(
                    f"mask image {path} is a 16-bit colour PNG, which would lose each value's low byte: "
                    "save the mask as 8-bit or as 16-bit greyscale"
                )
            return _from_image(image)
    except Image.DecompressionBombError as err:
        raise MaskError(f"mask image {path} is too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, MaskError):
            raise
        raise MaskError(f"cannot read mask image {path}: {err}") from None


def inside_folder(path: str | Path, folder: str | Path, what: str = "file") -> Path:
    """``path`` (relative to ``folder`` unless absolute) when it stays inside ``folder`` once ``..`` and symlinks
    are resolved; ``MaskError`` otherwise. Data files name their images and masks inside their data folder."""
    folder = Path(folder)
    candidate = Path(path) if Path(path).is_absolute() else folder / path
    resolved, base = candidate.resolve(), folder.resolve()
    if not resolved.is_relative_to(base):
        raise MaskError(
            f"the {what} path {str(path)!r} leads outside the data folder {str(folder)!r} (to {resolved}); "
            "data paths stay inside it unless allowed (see README: allow_outside_data_folder)"
        )
    return candidate


def is_mask_path(value: str) -> bool:
    """Whether a string names a mask image file rather than holding an encoded mask."""
    # CompositionCap strings are base64 and never contain a dot, so an image suffix marks a path.
    return Path(value).suffix.lower() in Image.registered_extensions()


def load_mask(
    value: Any,
    height: int | None = None,
    width: int | None = None,
    root: str | Path | None = None,
    allow_empty: bool = False,
    contain: bool = False,
) -> np.ndarray:
    """Decode a mask given in any supported format -> bool [height, width].

    ``value`` may be: a bool/numeric array or PIL image (nonzero = inside); a CompositionCap string;
    a COCO RLE dict; a COCO annotation dict (its ``segmentation`` is used); a box dict
    ``{"bbox": [x0, y0, x1, y1]}`` (corners, not COCO's x, y, w, h); a polygon list; or a path to an
    image file (relative to ``root``). Formats without their own size need ``height`` and ``width``;
    for the others they are checked when given (before decoding). An empty mask raises unless ``allow_empty``.
    ``contain``: a path must stay inside ``root`` (``inside_folder``).
    """
    if isinstance(value, Image.Image):
        _check_shape(np.empty((value.height, value.width, 0), bool), height, width)
        mask = _from_image(value)
    elif isinstance(value, np.ndarray):
        mask = _as_bool(value)
    elif isinstance(value, Path) or isinstance(value, str) and is_mask_path(value):
        mask = _from_path(Path(value), root, height, width, contain)
    elif isinstance(value, (str, bytes)):
        mask = decode_compositioncap(value, height, width)
    elif isinstance(value, dict):
        if "segmentation" in value:
            return load_mask(value["segmentation"], height, width, root, allow_empty, contain)
        if "counts" in value:
            mask = decode_rle(value, height, width)
        elif "bbox" in value:
            mask = box_to_mask(value["bbox"], *_check_size(height, width))
        else:
            raise MaskError(f"a mask dict needs 'counts' (RLE), 'bbox' or 'segmentation', got keys {sorted(value)}")
    elif isinstance(value, (list, tuple)):
        mask = polygon_to_mask(value, *_check_size(height, width))
    else:
        raise MaskError(f"unsupported mask value of type {type(value).__name__}")
    mask = _check_shape(mask, height, width)
    if not allow_empty and not mask.any():
        raise MaskError("mask is empty")
    return mask
