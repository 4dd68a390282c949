"""`finecaption caption`: masks in every form, regions files, the shared path's captions equal the plain path's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from finecaption_plugin import cli
from finecaption_plugin.caption import (
    RegionsFileError,
    group_by_image,
    instruction,
    parse_mask_argument,
    read_regions,
)
from finecaption_plugin.masks import MaskError, encode_compositioncap, encode_rle
from finecaption_plugin.prompts import task_prompt

HEIGHT, WIDTH = 48, 64


@pytest.fixture()
def picture(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[5:30, 10:40] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    return path, mask


def test_mask_arguments_in_every_form(picture, tmp_path):
    _, mask = picture
    assert (parse_mask_argument(str(tmp_path / "mask.png"), HEIGHT, WIDTH) == mask).all()
    assert (parse_mask_argument(json.dumps(encode_rle(mask)), HEIGHT, WIDTH) == mask).all()
    assert (parse_mask_argument('{"bbox": [10, 5, 40, 30]}', HEIGHT, WIDTH) == mask).all()
    assert (parse_mask_argument(encode_compositioncap(mask), HEIGHT, WIDTH) == mask).all()
    assert parse_mask_argument("[[10, 5, 40, 5, 40, 30, 10, 30]]", HEIGHT, WIDTH)[10, 20]
    with pytest.raises(MaskError, match="not valid JSON"):
        parse_mask_argument('{"bbox": [1, 2', HEIGHT, WIDTH)


def test_instruction():
    assert instruction("What is it?", "aarc", "color") == "What is it?"
    assert instruction(None, "aarc", "color") == task_prompt("aarc", "color")
    assert instruction(None, None, None) == task_prompt("rdc")


def test_regions_from_compositioncap_jsonl_and_coco(picture, tmp_path):
    _, mask = picture
    records = [
        {"id": "a", "image": "photo.png", "height": HEIGHT, "width": WIDTH, "mask": encode_compositioncap(mask),
         "task": "aarc", "attribute": "color", "captions": ["red"]},
        {"id": "g", "image": "photo.png", "height": HEIGHT, "width": WIDTH, "mask": None, "task": "global",
         "attribute": None, "captions": ["a scene"]},
    ]  # fmt: skip
    (tmp_path / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    regions = read_regions(tmp_path / "regions.jsonl")
    assert [r.id for r in regions] == ["a", "g"]
    assert regions[0].prompt == task_prompt("aarc", "color") and regions[1].prompt == task_prompt("global")
    assert (regions[0].mask == mask).all() and regions[1].mask is None
    assert group_by_image(regions) == {tmp_path / "photo.png": [0, 1]}

    coco = {
        "images": [{"id": 7, "file_name": "photo.png", "height": HEIGHT, "width": WIDTH}],
        "annotations": [
            {"id": 1, "image_id": 7, "segmentation": encode_rle(mask)},
            {"id": 2, "image_id": 7, "bbox": [10, 5, 30, 25]},  # COCO boxes are x, y, w, h
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    regions = read_regions(tmp_path / "coco.json", prompt="Name it.")
    assert [r.prompt for r in regions] == ["Name it.", "Name it."]
    assert (regions[0].mask == mask).all() and (regions[1].mask == mask).all()

    coco["annotations"].append({"id": 3, "image_id": 99, "bbox": [0, 0, 1, 1]})
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(RegionsFileError, match=r"annotation 2 \('id' 3\): field 'image_id'"):
        read_regions(tmp_path / "bad.json")
    records[0]["mask"] = "not base64 at all!"
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(RegionsFileError, match=r"record 0 \('id' 'a'\): field 'mask'"):
        read_regions(tmp_path / "bad.jsonl")


def test_caption_command_one_line_per_mask_equal_to_the_plain_path(tiny_checkpoint, picture, tmp_path, capsys):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from finecaption_plugin.region_captioning import RegionCaptioner

    path, mask = picture
    argv = ["caption", "--model", str(tiny_checkpoint), str(path), "--mask", str(tmp_path / "mask.png"),
            "--mask", '{"bbox": [0, 0, 20, 20]}', "--task", "aarc", "--attribute", "color",
            "--max-new-tokens", "6", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["mask"] for line in lines] == [str(tmp_path / "mask.png"), '{"bbox": [0, 0, 20, 20]}']
    assert {line["prompt"] for line in lines} == {task_prompt("aarc", "color")}

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    plain = RegionCaptioner(model, AutoProcessor.from_pretrained(tiny_checkpoint), share=False)
    box = np.zeros_like(mask)
    box[:20, :20] = True
    expected = plain.caption(Image.open(path).convert("RGB"), [mask, box], task_prompt("aarc", "color"),
                             max_new_tokens=6, do_sample=False)  # fmt: skip
    assert [line["caption"] for line in lines] == expected


def test_caption_command_regions_file(tiny_checkpoint, picture, tmp_path):
    _, mask = picture
    records = [
        {"id": f"r{i}", "image": "photo.png", "height": HEIGHT, "width": WIDTH, "mask": encode_compositioncap(mask),
         "task": "rdc", "attribute": None, "captions": ["x"]}
        for i in range(3)
    ]  # fmt: skip
    (tmp_path / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out" / "captions.jsonl"
    argv = ["caption", "--model", str(tiny_checkpoint), "--regions", str(tmp_path / "regions.jsonl"), "-o", str(out),
            "--max-new-tokens", "4"]  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["r0", "r1", "r2"]
    assert len({row["caption"] for row in rows}) == 1  # the same region and question: the same greedy answer


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["caption"], "give an IMAGE"),
        (["caption", "img.png", "--regions", "r.jsonl"], "not both"),
        (["caption", "--regions", "r.jsonl"], "--output"),
        (["caption", "img.png", "--task", "rdc", "--attribute", "color"], "--attribute goes with --task aarc"),
        (["caption", "missing.png"], "missing.png"),
    ],
)
def test_caption_command_input_errors_exit_2(argv, message, capsys, monkeypatch, tmp_path, tiny_checkpoint):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, "--model", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_mask_argument_exits_2_naming_it(tiny_checkpoint, picture, capsys):
    path, _ = picture
    assert cli.main(["caption", "--model", str(tiny_checkpoint), str(path), "--mask", '{"bbox": [1, 2']) == 2
    assert "not valid JSON" in capsys.readouterr().err
