import base64
import gzip
import itertools

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from finecaption_plugin.masks import (
    MaskError,
    box_to_mask,
    decode_compositioncap,
    decode_rle,
    dilate_mask,
    encode_compositioncap,
    encode_rle,
    load_mask,
    mask_to_box,
    mask_to_contour,
    polygon_to_mask,
    resize_mask,
)


def random_mask(height: int = 37, width: int = 53, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width)) > 0.6


def reference_decode(s: str, height: int, width: int) -> np.ndarray:
    """The CompositionCap mask format, ``base64(gzip(uint8 H*W))`` (tasks/compositioncap/README.md), decoded."""
    return np.frombuffer(gzip.decompress(base64.b64decode(s)), np.uint8).reshape(height, width) > 0


def store(raw: np.ndarray) -> str:
    return base64.b64encode(gzip.compress(raw.astype(np.uint8).tobytes())).decode()


def brute_dilate(mask: np.ndarray, radius: int, outside: bool) -> np.ndarray:
    height, width = mask.shape
    out = np.zeros_like(mask)
    for y, x in itertools.product(range(height), range(width)):
        window = [
            mask[yy, xx] if 0 <= yy < height and 0 <= xx < width else outside
            for yy in range(y - radius, y + radius + 1)
            for xx in range(x - radius, x + radius + 1)
        ]
        out[y, x] = any(window)
    return out


# CompositionCap


def test_compositioncap_round_trip_and_reference_decoder():
    mask = random_mask()
    encoded = encode_compositioncap(mask)
    assert np.array_equal(decode_compositioncap(encoded, 37, 53), mask)
    assert np.array_equal(reference_decode(encoded, 37, 53), mask)
    assert encode_compositioncap(mask) == encoded  # deterministic
    assert np.array_equal(decode_compositioncap(encoded.encode(), 37, 53), mask)


@pytest.mark.parametrize("foreground", [1, 255])
def test_compositioncap_decodes_01_and_0255_stores(foreground):
    mask = random_mask(seed=1)
    assert np.array_equal(decode_compositioncap(store(mask * foreground), 37, 53), mask)


def test_compositioncap_bad_base64():
    with pytest.raises(MaskError, match="bad base64"):
        decode_compositioncap("H4sI$$$", 4, 4)


def test_compositioncap_bad_gzip():
    with pytest.raises(MaskError, match="bad gzip"):
        decode_compositioncap(base64.b64encode(b"not a gzip stream").decode(), 4, 4)


def test_compositioncap_truncated_gzip():
    data = gzip.compress(np.ones(400, np.uint8).tobytes())
    with pytest.raises(MaskError, match="bad gzip.*truncated"):
        decode_compositioncap(base64.b64encode(data[:-12]).decode(), 20, 20)


def test_compositioncap_size_mismatch_message():
    s = store(np.ones(1200, np.uint8))
    with pytest.raises(MaskError) as info:
        decode_compositioncap(s, 20, 50)
    assert (
        str(info.value)
        == "mask decodes to more than 1000 bytes, expected height*width = 1000 (height=20, width=50)"
    )
    with pytest.raises(MaskError) as info:
        decode_compositioncap(s, 40, 50)
    assert str(info.value) == "mask decodes to 1200 bytes, expected height*width = 2000 (height=40, width=50)"


def test_compositioncap_needs_size():
    with pytest.raises(MaskError, match="height and width"):
        decode_compositioncap(encode_compositioncap(random_mask()), None, 53)
    with pytest.raises(MaskError, match="positive integers"):
        decode_compositioncap(encode_compositioncap(random_mask()), 0, 53)


# COCO RLE


@pytest.mark.parametrize("seed", range(3))
def test_rle_round_trip_matches_pycocotools(seed):
    mask = random_mask(61, 47, seed)
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [61, 47]
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"] == reference["counts"].decode()
    assert np.array_equal(decode_rle(rle), mask)
    assert np.array_equal(decode_rle({"size": [61, 47], "counts": reference["counts"]}), mask)


def test_rle_uncompressed_counts():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    # column-major runs: 5 background, then 2 in / 2 out three times, then 5 background
    rle = {"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2, 5]}
    assert np.array_equal(decode_rle(rle), mask)
    assert np.array_equal(decode_rle(rle, 4, 5), mask)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ("52", "sum to 7, expected height\\*width = 20"),
        ("5220003999", "sum to"),
        ("52\x7f", "invalid character"),
        ("5P", "ends in the middle"),
        ([5, 2, 2], "sum to 9"),
        ([25, -5], "negative"),
        ([5.0, 15], "integers"),
        (None, "must be a string"),
    ],
)
def test_rle_bad_counts(counts, message):
    with pytest.raises(MaskError, match=message):
        decode_rle({"size": [4, 5], "counts": counts})


def test_rle_size_checks():
    rle = encode_rle(random_mask())
    with pytest.raises(MaskError, match="the RLE's 'size' is 37x53 \\(height x width\\), expected 40x53"):
        decode_rle(rle, 40, 53)
    with pytest.raises(MaskError, match="'size'"):
        decode_rle({"counts": rle["counts"]})


# Polygons and boxes


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_polygon_matches_pycocotools_and_forms_agree():
    square = [2.0, 2.0, 12.0, 2.0, 12.0, 9.0, 2.0, 9.0]
    triangle = [20, 3, 28, 3, 24, 15]
    reference = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([square, triangle], 18, 30))) > 0
    nested = polygon_to_mask([square, triangle], 18, 30)
    assert np.array_equal(nested, reference)
    flat = polygon_to_mask(square, 18, 30)
    assert np.array_equal(flat, nested & (np.arange(30) < 16)[None, :])
    assert flat[5, 5] and not flat[0, 0] and not flat[15, 5]


@pytest.mark.parametrize(
    "bad", [[], [[1, 2, 3, 4]], [[1, 2, 3, 4, 5]], [[0, 0, 1, "x", 2, 2]], [[0, 0, 5, 0, float("nan"), 5]]]
)
def test_polygon_errors(bad):
    with pytest.raises(MaskError, match="polygon"):
        polygon_to_mask(bad, 10, 10)


def test_box_to_mask_pixels_and_clipping():
    mask = box_to_mask((2, 1, 5, 4), 6, 8)
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:5] = True
    assert np.array_equal(mask, expected)
    # fractional corners take every pixel they touch; out-of-frame parts are clipped
    assert np.array_equal(box_to_mask((1.5, 0.2, 4.1, 3.9), 6, 8)[0:4, 1:5], np.ones((4, 4), bool))
    assert box_to_mask((1.5, 0.2, 4.1, 3.9), 6, 8).sum() == 16
    assert box_to_mask((-5, -5, 100, 2), 6, 8).sum() == 2 * 8
    assert not box_to_mask((10, 10, 20, 20), 6, 8).any()


@pytest.mark.parametrize("bad", [(1, 2, 1, 5), (3, 2, 1, 5), (0, 0, float("inf"), 3), (1, 2, 3), "abcd"])
def test_box_errors(bad):
    with pytest.raises(MaskError, match="box"):
        box_to_mask(bad, 6, 8)


def test_mask_to_box_round_trip():
    for box in [(2, 1, 5, 4), (0, 0, 8, 6), (7, 5, 8, 6)]:
        assert mask_to_box(box_to_mask(box, 6, 8)) == box
    mask = random_mask()
    x0, y0, x1, y1 = mask_to_box(mask)
    assert mask[:, x0].any() and mask[:, x1 - 1].any() and mask[y0].any() and mask[y1 - 1].any()
    assert not mask[:, :x0].any() and not mask[:, x1:].any() and not mask[:y0].any() and not mask[y1:].any()
    with pytest.raises(MaskError, match="mask is empty"):
        mask_to_box(np.zeros((3, 3), bool))


# Morphology


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_dilate_matches_brute_force(radius):
    mask = np.random.default_rng(radius).random((13, 17)) > 0.85
    assert np.array_equal(dilate_mask(mask, radius), brute_dilate(mask, radius, outside=False))


def test_contour_of_rectangle_and_image_edge():
    mask = box_to_mask((2, 3, 9, 8), 12, 14)
    contour = mask_to_contour(mask)
    interior = box_to_mask((3, 4, 8, 7), 12, 14)
    assert np.array_equal(contour, mask & ~interior)
    thick = mask_to_contour(mask, width=2)
    assert np.array_equal(thick, mask & ~box_to_mask((4, 5, 7, 6), 12, 14))
    # a region cut by the frame is outlined along the frame too
    edge = mask_to_contour(box_to_mask((0, 0, 5, 5), 12, 14))
    assert edge[0, :5].all() and edge[:5, 0].all() and not edge[1:4, 1:4].any()


@pytest.mark.parametrize("width", [1, 2])
def test_contour_matches_brute_force_erosion(width):
    mask = random_mask(15, 19, seed=width) | box_to_mask((3, 3, 14, 12), 15, 19)
    eroded = ~brute_dilate(~mask, width, outside=True)
    assert np.array_equal(mask_to_contour(mask, width), mask & ~eroded)


def test_resize_mask_is_soft_and_keeps_thin_regions():
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True
    small = resize_mask(mask, (16, 8))
    assert small.shape == (16, 8) and small.dtype == np.float32
    assert np.allclose(small[:, :3], 1.0) and np.allclose(small[:, 5:], 0.0)
    assert np.array_equal(resize_mask(mask, (64, 64)) > 0.5, mask)
    line = np.zeros((64, 64), bool)
    line[:, 30] = True
    thin = resize_mask(line, (16, 16))
    assert 0 < thin.max() < 0.5 and thin.min() >= 0


# Universal loader


@pytest.fixture
def mask():
    return random_mask(20, 30, seed=7)


def test_load_mask_every_format(tmp_path, mask):
    height, width = mask.shape
    png = Image.fromarray(mask.astype(np.uint8) * 255)
    png.save(tmp_path / "m.png")
    palette = Image.fromarray(mask.astype(np.uint8) * 3, mode="L").convert("P")
    box = mask_to_box(mask)
    values = {
        "bool array": mask,
        "uint8 0/255 array": mask.astype(np.uint8) * 255,
        "PIL L": png,
        "PIL P": palette,
        "PIL RGBA": png.convert("RGBA"),
        "relative path": "m.png",
        "absolute path": str(tmp_path / "m.png"),
        "CompositionCap": encode_compositioncap(mask),
        "RLE": encode_rle(mask),
        "COCO annotation": {"segmentation": encode_rle(mask), "bbox": [0, 0, 1, 1]},
    }
    for name, value in values.items():
        loaded = load_mask(value, height, width, root=tmp_path)
        assert loaded.dtype == bool and np.array_equal(loaded, mask), name
    assert np.array_equal(load_mask(tmp_path / "m.png"), mask)
    assert np.array_equal(load_mask({"bbox": list(box)}, height, width), box_to_mask(box, height, width))
    square = [[2, 2, 12, 2, 12, 9, 2, 9]]
    assert np.array_equal(load_mask(square, height, width), polygon_to_mask(square, height, width))


def test_load_mask_empty(mask):
    empty = np.zeros_like(mask)
    with pytest.raises(MaskError, match="mask is empty"):
        load_mask(encode_compositioncap(empty), *mask.shape)
    assert not load_mask(empty, allow_empty=True).any()


def test_load_mask_errors(tmp_path, mask):
    with pytest.raises(MaskError, match="height and width"):
        load_mask(encode_compositioncap(mask))
    with pytest.raises(MaskError, match="height and width"):
        load_mask([[2, 2, 12, 2, 12, 9]])
    with pytest.raises(MaskError, match="mask is 20x30 \\(height x width\\), expected 21x30"):
        load_mask(mask, 21, 30)
    with pytest.raises(MaskError, match="mask file not found"):
        load_mask("missing.png", root=tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match="cannot read mask image"):
        load_mask("broken.png", root=tmp_path)
    with pytest.raises(MaskError, match="got keys \\['area'\\]"):
        load_mask({"area": 3}, 20, 30)
    with pytest.raises(MaskError, match="unsupported mask value of type int"):
        load_mask(3)
    with pytest.raises(MaskError, match="2-D"):
        load_mask(np.ones((2, 3, 3)))
