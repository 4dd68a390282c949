import base64
import gzip
import itertools

import numpy as np
import pytest
from bounded import png_16bit, png_header_only, run_bounded
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


# Hostile input (issue 12): sizes checked before anything is allocated, in bounded memory and time.


def rle_string(runs: list[int]) -> str:
    """COCO's compressed RLE string of ``runs`` (pycocotools' rleToString)."""
    out = []
    for index, value in enumerate(runs):
        if index > 2:
            value -= runs[index - 2]
        more = True
        while more:
            code = value & 0x1F
            value >>= 5
            more = value != -1 if code & 0x10 else value != 0
            out.append(chr((code | 0x20 if more else code) + 48))
    return "".join(out)


SETUP_MASKS = "from finecaption_plugin.masks import MaskError, decode_rle, load_mask, polygon_to_mask"


def test_a_polygon_with_huge_coordinates_is_cut_to_the_image_in_bounded_memory():
    # Before: 1e30 crashed pycocotools (segfault); 1e8 took 12.6 GB and 106 s.
    for far in ("1e30", "1e8"):
        done = run_bounded(
            SETUP_MASKS,
            f"mask = polygon_to_mask([[0, 0, {far}, 0, {far}, {far}]], 40, 60)\nprint(int(mask.sum()))",
            extra_mb=64,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        # The same pixels as the polygon drawn with the diagonal kept inside reach: the triangle above y = x.
        assert int(done.stdout) == int(polygon_to_mask([[0, 0, 1000, 0, 1000, 1000]], 40, 60).sum()) > 0


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_cutting_a_polygon_keeps_the_pixels_inside_the_image():
    rng = np.random.default_rng(1)
    differing = 0
    for _ in range(50):
        coords = rng.uniform(-300, 400, size=10).tolist()  # reaching beyond the cut box for a 40x60 image
        ours = polygon_to_mask([coords], 40, 60)
        theirs = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([coords], 40, 60))) > 0
        differing += int((ours != theirs).sum())
    assert differing <= 50 * 2  # pycocotools rounds the cut points to 1/5 px: at most a boundary pixel or two


def test_an_rle_size_is_checked_before_decoding_in_bounded_memory():
    # 7 characters whose size says 20000x20000 (400 MB once decoded); before, 763 MB went before the check.
    counts = rle_string([20000 * 20000])
    assert len(counts) <= 7
    body = f"""
for rle, expected in (({{"size": [20000, 20000], "counts": {counts!r}}}, (40, 60)),
                      ({{"size": [20000, 20000], "counts": {counts!r}}}, (None, None)),
                      ({{"size": [70000, 70000], "counts": "0"}}, (None, None))):
    try:
        decode_rle(rle, *expected)
    except MaskError as error:
        print(type(error).__name__, error)
"""
    done = run_bounded(SETUP_MASKS, body, extra_mb=64, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "MaskError the RLE's 'size' is 20000x20000 (height x width), expected 40x60"
    assert lines[1].startswith("MaskError mask is 20000x20000 (height x width) = 400000000 pixels, over the limit")
    assert "70000x70000" in lines[2] and "FINECAPTION_MAX_PIXELS" in lines[2]


@pytest.mark.parametrize("size", [[4.0, 5.0], ["4", 5], [4, True], [4], "4x5", None])
def test_an_rle_size_must_be_two_integers(size):
    rle = encode_rle(np.ones((4, 5), bool))
    with pytest.raises(MaskError, match=r"'size'"):
        decode_rle({"size": size, "counts": rle["counts"]})


def test_the_pixel_limit_is_documented_and_can_be_raised(monkeypatch):
    from finecaption_plugin.masks import MAX_PIXELS, max_pixels

    assert max_pixels() == MAX_PIXELS == 8192 * 8192
    monkeypatch.setenv("FINECAPTION_MAX_PIXELS", "100")
    with pytest.raises(MaskError, match=r"= 200 pixels, over the limit of 100"):
        box_to_mask((0, 0, 4, 4), 10, 20)
    monkeypatch.setenv("FINECAPTION_MAX_PIXELS", "lots")
    with pytest.raises(MaskError, match="FINECAPTION_MAX_PIXELS"):
        max_pixels()


@pytest.mark.parametrize("tail", [b"trailing bytes", gzip.compress(b"")], ids=["trailing", "second-member"])
def test_a_gzip_stream_must_hold_one_member_and_nothing_after(tail):
    raw = np.ones((4, 5), np.uint8).tobytes()
    value = base64.b64encode(gzip.compress(raw) + tail).decode()
    with pytest.raises(MaskError, match=r"bytes follow the end of the gzip stream"):
        decode_compositioncap(value, 4, 5)


def test_a_mask_png_is_checked_from_its_header_in_bounded_memory(tmp_path):
    # Over Pillow's own limit (a raw DecompressionBombError before), over ours, and of the wrong size: each is
    # refused from the header, before the canvas (up to 400 MB) is allocated.
    for name, (width, height) in {"bomb": (20000, 20000), "large": (9000, 9000), "wrong": (8000, 8000)}.items():
        (tmp_path / f"{name}.png").write_bytes(png_header_only(width, height))
    body = f"""
for name in ("bomb", "large", "wrong"):
    try:
        load_mask(name + ".png", 40, 60, root={str(tmp_path)!r})
    except MaskError as error:
        print(name, type(error).__name__, error)
"""
    done = run_bounded(SETUP_MASKS, body, extra_mb=48, timeout=30)
    assert done.returncode == 0, done.stderr
    bomb, large, wrong = done.stdout.splitlines()
    assert bomb.startswith("bomb MaskError mask image") and "too large" in bomb
    assert large.startswith("large MaskError mask image") and "over the limit" in large
    assert wrong.startswith("wrong MaskError mask is 8000x8000 (height x width), expected 40x60")


def test_a_16_bit_png_mask_is_read_by_value_not_saturated(tmp_path):
    grey = np.zeros((4, 5), np.uint16)
    grey[1:3, 1:3] = 1  # a 16-bit label image: 1 inside
    (tmp_path / "grey.png").write_bytes(png_16bit(grey))
    expected = grey > 0
    assert np.array_equal(load_mask("grey.png", 4, 5, root=tmp_path), expected)
    grey[grey == 0] = 0
    grey[1:3, 1:3] = 65535
    (tmp_path / "white.png").write_bytes(png_16bit(grey))
    assert np.array_equal(load_mask("white.png", 4, 5, root=tmp_path), expected)
    # 16-bit colour: Pillow keeps each value's high byte only (1 would read as 0): refused, saying why.
    (tmp_path / "rgb.png").write_bytes(png_16bit(np.stack([grey // 65535] * 3, axis=-1)))
    with pytest.raises(MaskError, match="16-bit colour PNG"):
        load_mask("rgb.png", 4, 5, root=tmp_path)


def test_a_mask_path_stays_inside_its_folder(tmp_path, mask):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    Image.fromarray(mask.astype(np.uint8) * 255).save(outside / "m.png")
    (data / "link.png").symlink_to(outside / "m.png")
    for value in ("../outside/m.png", str(outside / "m.png"), "link.png"):
        with pytest.raises(MaskError, match=r"the mask path .* leads outside the data folder"):
            load_mask(value, 20, 30, root=data, contain=True)
        assert load_mask(value, 20, 30, root=data).sum() == mask.sum()  # the library default reads it
