"""finecaption_plugin/compositioncap_hooks.py: lmms-eval's hooks (docs, visual prompts, prompts, results)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from compositioncap_fixtures import as_dataset, first_record, load_records

from finecaption_plugin import compositioncap
from finecaption_plugin.compositioncap import CompositionCapError, select_docs
from finecaption_plugin.masks import decode_compositioncap, mask_to_box
from finecaption_plugin.visual_prompts import MARK_COLOR, VISUAL_PROMPT_STYLES


def test_every_style_renders_from_the_cached_mask(root: Path):
    doc = first_record(root, "aarc")
    for style in VISUAL_PROMPT_STYLES:  # the cached mask is read-only: no renderer may write into it
        (image,) = compositioncap.doc_to_visual(doc, {"visual_prompt": style})
        width, height = image.size  # a tuple's <= is lexicographic: each side on its own
        if style == "crop":  # the region's box grown by its size per side, within the image
            assert 0 < width <= doc["width"] and 0 < height <= doc["height"]
        else:
            assert (width, height) == (doc["width"], doc["height"])


def test_an_error_in_another_task_does_not_block(root: Path):
    records = load_records(root)
    records[0]["mask"] = "not base64!"  # an aarc record
    assert len(select_docs(as_dataset(records), "global")) == 3


@pytest.mark.parametrize(
    "style, phrase",
    [
        ("mask", "the masked region"),
        ("bbox", "the region inside the red box"),
        ("contour", "the region outlined in red"),
        ("overlay", "the region highlighted in red"),
        ("crop", "the object in the middle of this close-up"),
    ],
)
def test_prompt_names_the_region_as_the_style_shows_it(root: Path, style: str, phrase: str):
    doc = first_record(root, "aarc")
    assert compositioncap.doc_to_text(doc, {"visual_prompt": style}) == f"Describe the color of {phrase}."


def test_bbox_text_prompt_carries_the_normalised_box(root: Path):
    doc = first_record(root, "rdc")
    text = compositioncap.doc_to_text(doc, {"visual_prompt": "bbox_text"})
    numbers = [float(v) for v in re.search(r"\[([^\]]+)\]", text).group(1).split(",")]
    x0, y0, x1, y1 = mask_to_box(decode_compositioncap(doc["mask"], doc["height"], doc["width"]))
    expected = [x0 / doc["width"], y0 / doc["height"], x1 / doc["width"], y1 / doc["height"]]
    np.testing.assert_allclose(numbers, expected, atol=5e-4)


def test_global_prompt_ignores_the_style(root: Path):
    doc = first_record(root, "global")
    for style in ("mask", "bbox", "crop"):
        assert compositioncap.doc_to_text(doc, {"visual_prompt": style}) == "Describe the image in detail."
        (image,) = compositioncap.doc_to_visual(doc, {"visual_prompt": style})
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(compositioncap.doc_image(doc)))


def test_mask_style_carries_the_mask_in_alpha(root: Path):
    doc = first_record(root, "aarc")
    (image,) = compositioncap.doc_to_visual(doc, {"visual_prompt": "mask"})
    mask = decode_compositioncap(doc["mask"], doc["height"], doc["width"])
    assert image.mode == "RGBA"
    assert np.array_equal(np.asarray(image.getchannel("A")) > 0, mask)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(compositioncap.doc_image(doc)))


def test_bbox_style_draws_a_red_box_around_the_region(root: Path):
    doc = first_record(root, "rdc")
    (image,) = compositioncap.doc_to_visual(doc, {"visual_prompt": "bbox"})
    pixels = np.asarray(image)
    x0, y0, x1, y1 = mask_to_box(compositioncap.doc_mask(doc))
    red = np.all(pixels == MARK_COLOR, axis=-1)
    assert red[max(y0 - 1, 0), (x0 + x1) // 2] and red[min(y1, doc["height"] - 1), (x0 + x1) // 2]
    assert np.array_equal(
        pixels[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4],
        np.asarray(compositioncap.doc_image(doc))[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4],
    )


def test_unknown_style_is_rejected(root: Path):
    with pytest.raises(CompositionCapError, match="visual_prompt 'arrow' is not one of mask, bbox"):
        compositioncap.doc_to_text(first_record(root, "aarc"), {"visual_prompt": "arrow"})


def test_a_sample_carries_no_references(root: Path):
    doc = next(iter(compositioncap.variant_docs("compositioncap_global")(as_dataset(load_records(root)))))
    metrics = compositioncap.process_results(doc, ["an answer"])
    assert list(metrics) == list(compositioncap.METRICS)
    assert all(value == {"variant": "compositioncap_global", "style": None, "id": doc["id"], "attribute": None,
                         "prediction": "an answer"} for value in metrics.values())  # fmt: skip


def test_task_names_outside_compositioncap_are_refused():
    with pytest.raises(CompositionCapError, match="'compositioncap_dense' is not a CompositionCap task name"):
        compositioncap.variant_docs("compositioncap_dense")
