"""The CompositionCap record schema (finecaption_plugin/records.py): one rule, one reader, used everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compositioncap_fixtures import as_dataset, load_records

from finecaption_plugin import compositioncap
from finecaption_plugin.compositioncap import select_docs
from finecaption_plugin.records import CompositionCapError, are_captions, is_caption, read_records


@pytest.mark.parametrize("text", ["", " ", "\n\t", None, 3, ["a"]])
def test_a_caption_is_a_string_not_empty_after_strip(text):
    assert not is_caption(text)
    assert is_caption(" a red car ")
    assert not are_captions([]) and not are_captions(["fine", text]) and are_captions(["fine"])


def test_jsonl_records_keep_their_line_numbers(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2}\n')
    assert read_records(path) == [(1, {"id": 1}), (3, {"id": 2})]
    path.write_text('{"id": 1}\n{not json\n')
    with pytest.raises(CompositionCapError, match=r"^line 2, column 2: not JSON"):
        read_records(path)
    path.write_text('{"id": 1}\n[1]\n')
    with pytest.raises(CompositionCapError, match=r"^line 2: expected a JSON object, got list"):
        read_records(path)


def test_a_json_list_gives_the_line_each_record_starts_on(tmp_path: Path):
    path = tmp_path / "r.json"
    path.write_text('[\n  {"id": 1},\n\n  {"id": 2,\n   "x": [1, 2]}, {"id": 3}\n]\n')
    assert read_records(path) == [(2, {"id": 1}), (4, {"id": 2, "x": [1, 2]}), (5, {"id": 3})]
    path.write_text(json.dumps({"id": 1}))
    with pytest.raises(CompositionCapError, match="expected a JSON list of records, got dict"):
        read_records(path)


def test_an_empty_caption_is_refused_by_training_evaluation_and_scoring(tmp_path: Path):
    from PIL import Image

    from finecaption_plugin.compositioncap_data import check_record
    from finecaption_plugin.conversation import TEMPLATES
    from finecaption_plugin.data import DataError, build_samples
    from finecaption_plugin.metrics import CaptionInputError, caption_scores

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    record = {"id": "x", "image": "a.png", "height": 8, "width": 8, "mask": None, "task": "global", "captions": [" "]}
    with pytest.raises(CompositionCapError, match="field 'captions'"):
        check_record(0, record, tmp_path)
    with pytest.raises(DataError, match="field 'captions'"):
        build_samples([record], TEMPLATES["llama3"], tmp_path)
    with pytest.raises(CaptionInputError, match="empty reference"):
        caption_scores(["a caption"], [[" "]], metrics=["BLEU"])


# Hostile input (issue 12)


def test_a_file_that_is_not_utf8_names_its_line_and_column(tmp_path: Path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": "caf\xe9"}\n')  # Latin-1
    with pytest.raises(CompositionCapError, match=r"^line 2, column 12: not UTF-8 text \(byte 0xe9\)"):
        read_records(path)


def test_a_bad_line_gives_its_own_line_and_column(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2,\n')
    with pytest.raises(CompositionCapError, match=r"^line 3, column 10: not JSON \(Expecting property name"):
        read_records(path)
    path = tmp_path / "lines.json"  # JSON lines in a .json file
    path.write_text('{"id": 1}\n{"id": 2}\n')
    with pytest.raises(CompositionCapError, match=r"^line 2, column 1: not JSON \(Extra data\).*\.jsonl"):
        read_records(path)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ({"entities": {"car": {}}}, r"field 'entities': expected a list of entity objects, got dict"),
        ({"entities": ["car"]}, r"field 'entities\[0\]': expected an object with 'id' and 'mask', got str"),
        ({"entities": [{"id": 1, "mask": "x", "attributes": ["red"]}]}, r"field 'entities\[0\].attributes'"),
        ({"entities": [{"id": 1, "mask": "x", "attributes": {"color": 3}}]}, r"attributes.color': expected a"),
        ({"entities": [{"id": 1, "mask": "x", "dense_captions": "a car"}]}, r"'entities\[0\].dense_captions'"),
        ({"global_captions": "a street"}, r"field 'global_captions': expected a list"),
        ({"image": 7}, r"field 'image': expected a path string, got int"),
    ],
)
def test_the_nested_converter_names_the_line_record_and_field(tmp_path: Path, image: dict, message: str):
    from finecaption_plugin.records import convert_nested

    good = {"id": "a", "image": "a.png", "height": 4, "width": 4, "global_captions": ["A street."]}
    source = tmp_path / "nested.jsonl"
    source.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "id": "b", **image}) + "\n")
    with pytest.raises(CompositionCapError, match=rf"^line 3: image record 1\b.*{message}"):
        convert_nested(source, tmp_path / "flat.jsonl")
    assert not (tmp_path / "flat.jsonl").exists()


def test_an_image_is_checked_from_its_header_in_bounded_memory(tmp_path: Path):
    from bounded import png_header_only, run_bounded

    for name, (width, height) in {"bomb": (20000, 20000), "large": (9000, 9000), "wrong": (8000, 8000)}.items():
        (tmp_path / f"{name}.png").write_bytes(png_header_only(width, height, color_type=2))
    body = f"""
for name in ("bomb", "large", "wrong"):
    for read in (lambda path: image_size(path, expected=(60, 40)), open_image):
        if name == "wrong" and read is open_image:
            continue
        try:
            read({str(tmp_path)!r} + "/" + name + ".png")
        except ImageError as error:
            print(name, type(error).__name__, error)
"""
    done = run_bounded("from finecaption_plugin.records import ImageError, image_size, open_image", body, extra_mb=48)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and all(" ImageError " in line for line in lines)
    assert "too large" in lines[0] and "too large" in lines[1]  # Pillow's DecompressionBombError, named
    assert "over the limit" in lines[2] and "over the limit" in lines[3]
    assert lines[4].endswith("wrong.png is 8000x8000 (width x height), the record says 60x40")


def test_a_16_bit_grey_image_keeps_its_greys(tmp_path: Path):
    import numpy as np
    from bounded import png_16bit

    from finecaption_plugin.records import open_image

    grey = np.full((4, 5), 1000, np.uint16)  # a dark grey in 16 bits (Pillow's RGB conversion clips it to white)
    grey[0, 0], grey[0, 1] = 0, 65535
    (tmp_path / "grey.png").write_bytes(png_16bit(grey))
    pixels = np.asarray(open_image(tmp_path / "grey.png"))
    assert pixels.shape == (4, 5, 3) and pixels[0, 0, 0] == 0 and pixels[0, 1, 0] == 255
    assert pixels[1, 1, 0] == 1000 // 257


def test_nested_form_flattens_to_checked_records(root: Path, tmp_path: Path):
    flat = load_records(root)[:7]  # image 0: square (color, shape, dense), circle (same), global
    nested = {
        "id": "img0",
        "image": flat[0]["image"],
        "height": flat[0]["height"],
        "width": flat[0]["width"],
        "global_captions": flat[6]["captions"],
        "entities": [
            {
                "id": shape,
                "mask": flat[first]["mask"],
                "dense_captions": flat[first + 2]["captions"],
                "attributes": {"color": flat[first]["captions"][0], "shape": flat[first + 1]["captions"]},
            }
            for shape, first in (("square", 0), ("circle", 3))
        ],
    }
    (tmp_path / "nested.json").write_text(json.dumps([nested]))
    target = root / compositioncap.TEST_FILE
    assert compositioncap.convert_nested(tmp_path / "nested.json", target) == 7
    converted = load_records(root)
    key = lambda r: (r["task"], r["attribute"] or "", r["captions"][0])  # noqa: E731
    assert sorted(map(key, converted)) == sorted(map(key, flat))
    assert {r["id"] for r in converted} >= {"img0_square_color", "img0_circle_dense", "img0_global"}
    for task in ("aarc", "rdc", "global"):
        select_docs(as_dataset(converted), task)  # every record passes the checks


def test_nested_entity_without_mask_is_named(tmp_path: Path):
    with pytest.raises(CompositionCapError, match=r"image record 0 \('id' 'a'\): field 'entities\[1\]'"):
        compositioncap.flatten_image(
            0, {"image": "a.png", "height": 2, "width": 2, "entities": [{"id": 1, "mask": "x"}, {"id": 2}]}
        )
