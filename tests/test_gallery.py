import html

import numpy as np
import pytest
from PIL import Image

from finecaption_plugin.gallery import (
    SHEET_COLUMNS,
    SHEET_FONT_SIZE,
    SHEET_PAD,
    SHEET_TEXT_LINES,
    SHEET_TILE,
    THUMBNAIL_SIZE,
    contact_sheet,
    write_gallery,
)
from finecaption_plugin.masks import MaskError, box_to_mask, encode_rle


def gray(width: int = 200, height: int = 150) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 128, 128))


def sample(index: int, **extra) -> dict:
    base = {
        "id": f"img{index}",
        "image": gray(),
        "mask": box_to_mask((40, 30, 120, 100), 150, 200),
        "prediction": f"prediction {index}",
        "references": [f"reference {index} a", f"reference {index} b"],
    }
    return base | extra


def expected_sheet_size(count: int) -> tuple[int, int]:
    columns = min(count, SHEET_COLUMNS)
    rows = -(-count // SHEET_COLUMNS)
    line_height = SHEET_FONT_SIZE + 3
    return (
        columns * (SHEET_TILE + SHEET_PAD) + SHEET_PAD,
        rows * (SHEET_TILE + SHEET_TEXT_LINES * line_height + SHEET_PAD) + SHEET_PAD,
    )


def test_gallery_files_escaping_and_scores(tmp_path):
    tricky = 'a <b>bold</b> & "quoted" caption with (entity_id_3)'
    samples = [sample(i) for i in range(5)]
    samples[2]["prediction"] = tricky
    samples[3]["scores"] = {"CIDEr": 1.23456, "BLEU-4": 0.5, "note": "<ok>"}
    samples[4]["mask"] = None
    page = write_gallery(iter(samples), tmp_path, "Run <1>")
    assert page == tmp_path / "index.html"
    text = page.read_text(encoding="utf-8")
    assert "<title>Run &lt;1&gt;</title>" in text
    for item in samples:
        assert html.escape(item["prediction"]) in text
        for reference in item["references"]:
            assert html.escape(reference) in text
    assert tricky not in text and "<b>bold</b>" not in text
    assert "<td>CIDEr</td><td>1.235</td>" in text and "<td>note</td><td>&lt;ok&gt;</td>" in text
    for index in range(5):
        with Image.open(tmp_path / "images" / f"{index:04d}.png") as image:
            assert image.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE * 150 // 200)  # small images are shown large
            assert f'src="images/{index:04d}.png"' in text
    with Image.open(tmp_path / "gallery.png") as sheet:
        assert sheet.size == expected_sheet_size(5)


def test_outline_is_drawn_only_when_there_is_a_mask(tmp_path):
    write_gallery([sample(0), sample(1, mask=None)], tmp_path, "t")
    red = (255, 0, 0)
    with Image.open(tmp_path / "images" / "0000.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    outlined = (pixels == red).all(axis=2)
    scale = THUMBNAIL_SIZE / 200  # the 200 x 150 image is shown at THUMBNAIL_SIZE wide

    def near(row: int) -> np.ndarray:  # the rows around ``row`` of the original image, as shown
        return outlined[round(row * scale) - 3 : round(row * scale) + 4, round(45 * scale) : round(115 * scale)]

    assert near(30).any(axis=0).all() and near(99).any(axis=0).all()
    assert not outlined[round(45 * scale) : round(85 * scale), round(55 * scale) : round(105 * scale)].any()
    with Image.open(tmp_path / "images" / "0001.png") as image:
        assert not (np.asarray(image.convert("RGB")) == red).all(axis=2).any()


def test_limits_groups_and_thumbnails(tmp_path):
    samples = (sample(i, group=f"group {i % 2}") for i in range(60))
    page = write_gallery(samples, tmp_path, "t", sheet_samples=6)
    text = page.read_text(encoding="utf-8")
    assert text.count('class="card"') == 50
    assert len(list((tmp_path / "images").glob("*.png"))) == 50
    assert "prediction 49<" in text and "prediction 50<" not in text
    assert text.index("<h2>group 0</h2>") < text.index("<h2>group 1</h2>")
    assert text.index("prediction 2<") < text.index("<h2>group 1</h2>") < text.index("prediction 1<")
    with Image.open(tmp_path / "gallery.png") as sheet:
        assert sheet.size == expected_sheet_size(6)
    big = write_gallery([sample(0, image=gray(1600, 900), mask=None)], tmp_path / "big", "t")
    with Image.open(big.parent / "images" / "0000.png") as image:
        assert max(image.size) == THUMBNAIL_SIZE


def test_image_paths_and_mask_forms_relative_to_root(tmp_path):
    gray().save(tmp_path / "photo.png")
    mask = box_to_mask((40, 30, 120, 100), 150, 200)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    samples = [
        sample(0, image="photo.png", mask="mask.png"),
        sample(1, image=str(tmp_path / "photo.png"), mask=encode_rle(mask)),
    ]
    write_gallery(samples, tmp_path / "out", "t", root=tmp_path)
    for index in range(2):
        with Image.open(tmp_path / "out" / "images" / f"{index:04d}.png") as image:
            scale = THUMBNAIL_SIZE / 200  # shown large: the outline of row 30 lies near row 30 * scale
            rows = np.asarray(image.convert("RGB"))[round(30 * scale) - 3 : round(30 * scale) + 4, round(60 * scale)]
            assert (rows == (255, 0, 0)).all(axis=1).any()


def test_long_text_is_wrapped_and_cut(tmp_path):
    long = " ".join(["word"] * 300) + " " + "x" * 400
    write_gallery([sample(0, prediction=long)], tmp_path, "t")
    with Image.open(tmp_path / "gallery.png") as sheet:
        assert sheet.size == expected_sheet_size(1)
        text_area = np.asarray(sheet.convert("L"))[SHEET_PAD + SHEET_TILE :, SHEET_TILE + SHEET_PAD :]
        assert (text_area == 255).all()  # nothing drawn past the tile's right edge


def test_reference_keeps_its_lines_under_a_long_caption():
    sheet = np.asarray(contact_sheet([(gray(), "long caption " * 200, "the reference " * 200)]).convert("L"))
    line_height = SHEET_FONT_SIZE + 3
    top = SHEET_PAD + SHEET_TILE
    caption_band = sheet[top : top + (SHEET_TEXT_LINES - 2) * line_height]
    reference_band = sheet[top + (SHEET_TEXT_LINES - 2) * line_height :]
    assert (caption_band == 0).any()  # black caption text on every line budget it has
    assert (reference_band < 200).any() and not (reference_band == 0).any()  # gray reference text
    for line in range(SHEET_TEXT_LINES):
        assert (sheet[top + line * line_height : top + (line + 1) * line_height] < 200).any()


def test_bad_samples_name_the_sample_and_field(tmp_path):
    with pytest.raises(ValueError, match=r"sample 1 \('id' 'img1'\): field 'image': cannot read"):
        write_gallery([sample(0), sample(1, image="missing.png")], tmp_path, "t", root=tmp_path)
    with pytest.raises(ValueError, match=r"sample 0 \('id' 'img0'\): field 'image': expected a PIL image"):
        write_gallery([sample(0, image=None)], tmp_path, "t")
    with pytest.raises(MaskError, match=r"sample 0 \('id' 'img0'\): field 'mask': mask is 10x10"):
        write_gallery([sample(0, mask=np.ones((10, 10), bool))], tmp_path, "t")


def test_gallery_marks_right_and_wrong_attribute_values(tmp_path):
    image = Image.new("RGB", (64, 48), "white")
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:40] = True
    right = {"attribute": "color", "truth": "red", "stated": "red", "correct": True}
    wrong = {"attribute": "color", "truth": "red", "stated": "blue", "correct": False}
    region = {"image": image, "mask": mask, "references": ["Red."]}
    samples = [
        {"id": "a", **region, "prediction": "It is red.", "verdict": right},
        {"id": "b", **region, "prediction": "It is blue.", "verdict": wrong},
        {"id": "c", "image": image, "mask": None, "prediction": "A scene.", "references": ["A scene."]},
    ]
    text = write_gallery(samples, tmp_path, title="verdicts").read_text()
    assert text.count('class="card right"') == 1 and text.count('class="card wrong"') == 1
    assert "right color: red" in text
    assert "wrong color: says blue, is red" in text
    assert text.count('class="card"') == 1  # no verdict, no mark
    with Image.open(tmp_path / "images" / "0000.png") as shown:
        pixels = np.asarray(shown)
    assert shown.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE * 48 // 64)
    assert (pixels == (255, 0, 0)).all(-1).any()  # the region's outline, drawn at the shown size
