"""The synthetic scene generator: determinism, exact visible masks, references that state their truth, formats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finecaption_plugin import synth
from finecaption_plugin.masks import decode_compositioncap, mask_to_box

SIZE = 128


@pytest.fixture(scope="module")
def scenes() -> list[synth.Scene]:
    return [synth.make_scene(7, index, SIZE) for index in range(40)]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("format", synth.FORMATS)
def test_deterministic_files(tmp_path: Path, format: str) -> None:
    first = synth.write_synth(tmp_path / "a", 3, seed=1, format=format, size=96)
    synth.write_synth(tmp_path / "b", 3, seed=1, format=format, size=96)
    synth.write_synth(tmp_path / "c", 3, seed=2, format=format, size=96)
    a, b, c = (_digests(tmp_path / name) for name in "abc")
    assert a == b and len(a) == 4
    assert a.keys() == c.keys() and all(a[name] != c[name] for name in a)
    assert first.name == ("train.json" if format == "llava" else "compositioncap_test.jsonl")


def test_masks_are_the_visible_pixels(scenes: list[synth.Scene]) -> None:
    min_pixels = round(synth.MIN_VISIBLE_PIXELS * (SIZE / 256) ** 2)
    for scene in scenes:
        assert 3 <= len(scene.entities) <= 6
        # Draw the entities one after the other, each over the earlier ones.
        labels = np.full((SIZE, SIZE), -1)
        for k, entity in enumerate(scene.entities):
            assert np.array_equal(
                entity.full_mask, synth.shape_mask(entity.category, entity.center, entity.radii, SIZE)
            )
            labels[entity.full_mask] = k
        painted = np.zeros((SIZE, SIZE), bool)
        for k, entity in enumerate(scene.entities):
            assert np.array_equal(entity.mask, labels == k)
            assert entity.mask.sum() >= max(min_pixels, synth.MIN_VISIBLE_FRACTION * entity.full_mask.sum())
            painted |= entity.mask
            colors = {tuple(c) for c in scene.image[entity.mask]}
            assert colors <= set(synth.COLORS[entity.color])  # its own colour and pattern shade, nothing else
            if entity.texture == "solid":
                assert colors == {synth.COLORS[entity.color][0]}
            else:
                assert len(colors) == 2
        background = scene.image[~painted].astype(int)
        assert background.min() >= 190  # pale: far from every entity colour


def test_overlap_rate(scenes: list[synth.Scene]) -> None:
    assert synth.overlap_rate(scenes) >= 1 / 3


def test_attribute_variety(scenes: list[synth.Scene]) -> None:
    entities = [entity for scene in scenes for entity in scene.entities]
    for attribute, values in synth.ATTRIBUTE_VALUES.items():
        assert {entity.values()[attribute] for entity in entities} == set(values), attribute
    assert {entity.size for entity in entities} == set(synth.SIZES)
    assert {scene.background for scene in scenes} == set(synth.BACKGROUNDS)


def test_references_state_their_truth(scenes: list[synth.Scene]) -> None:
    for scene in scenes[:15]:
        for record in synth.compositioncap_records(scene):
            if record["task"] == "global":
                assert "truth" not in record and "chance" not in record
                continue
            truth = record["truth"]
            assert truth == scene.entities[record["entity"]].values()
            assert len(set(record["captions"])) == 3
            for caption in record["captions"]:
                assert truth["category name"] in caption
                if record["task"] == "rdc":
                    parsed = {attribute: synth.parse_attribute(attribute, caption) for attribute in truth}
                    assert parsed == truth, caption
                elif record["attribute"] in synth.ATTRIBUTE_VALUES:
                    assert synth.parse_attribute(record["attribute"], caption) == truth[record["attribute"]], caption
            if record["task"] == "aarc" and record["attribute"] in synth.ATTRIBUTE_VALUES:
                same = [e.values()[record["attribute"]] == truth[record["attribute"]] for e in scene.entities]
                assert record["chance"] == pytest.approx(sum(same) / len(same))


@pytest.mark.parametrize(
    ("attribute", "text", "value"),
    [
        ("color", "The star is red.", "red"),
        ("color", "It is to the left of the blue square and it is red.", "red"),
        ("color", "A ORANGE heart.", "orange"),
        ("color", "The star is teal.", None),
        ("color", "", None),
        ("category name", "The star is to the left of the blue square.", "star"),
        ("category name", "Behind a large red striped circle sits a ring.", "ring"),
        ("category name", "Two hearts.", "heart"),
        ("category name", "A starfish.", None),
        ("relative location with other objects", "It is in the top  left, to the right of the red star.", "top left"),
        ("relative location with other objects", "The ring is to the left of the green cross.", None),
        ("relative location with other objects", "In the bottom of the image.", "bottom"),
        ("shape", "The circle is wide, not tall.", "wide"),
        ("materials/texture", "A checkered square", "checkered"),
        ("materials/texture", "nothing to see", None),
    ],
)
def test_parse_attribute(attribute: str, text: str, value: str | None) -> None:
    assert synth.parse_attribute(attribute, text) == value


def test_parse_attribute_unknown() -> None:
    with pytest.raises(KeyError, match="one-sentence description"):
        synth.parse_attribute("one-sentence description", "A red star.")


def test_corpus_covers_the_vocabulary() -> None:
    text = " ".join(synth.corpus())
    for values in (*synth.ATTRIBUTE_VALUES.values(), synth.SIZES, synth.RELATIONS):
        for value in values:
            assert value in text, value
    for phrase in synth.REGION_PHRASES.values():
        assert phrase.split("{")[0] in text
    assert synth.corpus() == synth.corpus()


def test_compositioncap_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finecaption_plugin import compositioncap

    path = synth.write_synth(tmp_path, 2, seed=3, size=SIZE)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({r["id"] for r in records}) == len(records)
    sizes: dict = {}
    for index, record in enumerate(records):
        compositioncap.check_record(index, record, tmp_path, sizes)
    assert {r["task"] for r in records} == {"aarc", "rdc", "global"}
    assert {r["attribute"] for r in records if r["task"] == "aarc"} == set(synth.ATTRIBUTES)
    # The prompt the llava records carry is the one the lmms-eval tasks ask with.
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(tmp_path))
    record = next(r for r in records if r["task"] == "aarc")
    box = mask_to_box(decode_compositioncap(record["mask"], SIZE, SIZE))
    for style in ("mask", "bbox", "contour"):
        expected = compositioncap.doc_to_text(record, {"visual_prompt": style})
        assert synth.region_prompt("aarc", record["attribute"], style, box, (SIZE, SIZE)) == expected


def test_llava_records_train(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from transformers import AutoProcessor

    from finecaption_plugin.conversation import get_template
    from finecaption_plugin.data import SupervisedDataset, build_samples, read_records

    path = synth.write_synth(tmp_path, 4, seed=0, format="llava", size=SIZE)
    records = read_records(path)
    scenes = [synth.make_scene(0, index, SIZE) for index in range(4)]
    assert len(records) == sum(len(s.entities) * (len(synth.ATTRIBUTES) + 1) + 1 for s in scenes)
    styles = [r.get("visual_prompt") for r in records]
    assert {"mask", "bbox", "contour"} <= set(styles)
    for record in records:
        human, gpt = record["conversations"]
        assert human["value"].startswith("<image>\n") and gpt["value"]
        if record.get("visual_prompt"):
            assert synth.REGION_PHRASES[record["visual_prompt"]] in human["value"]
        else:
            assert "mask" not in record and record["id"].endswith("_global")
    template = get_template("llama3")
    samples = build_samples(records, template, tmp_path)
    assert [s.visual_prompt for s in samples] == [style or "mask" for style in styles]
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    dataset = SupervisedDataset(samples, processor, template, tmp_path, 4096)
    by_style = {}
    for index, style in enumerate(styles):
        by_style.setdefault(style, index)
    for style, index in by_style.items():
        image, mask = dataset.load_image(samples[index])
        original = np.asarray(Image.open(tmp_path / records[index]["image"]).convert("RGB"))
        if style == "mask":
            assert mask is not None and mask.any() and np.array_equal(np.asarray(image), original)
        else:  # drawn on the image, the whole image given
            assert mask is None
            assert (np.asarray(image) != original).any() == (style is not None)
    item = dataset[by_style["bbox"]]
    assert item["mask_values"].min() == 1  # the whole image
    assert item["pixel_values"].shape[-1] == processor.image_processor.image_size


def test_visual_prompt_field_checked(tmp_path: Path) -> None:
    from finecaption_plugin.conversation import get_template
    from finecaption_plugin.data import DataError, build_samples

    path = synth.write_synth(tmp_path, 1, seed=0, format="llava", size=64)
    records = json.loads(path.read_text())
    template = get_template("llama3")
    bad = [dict(records[0], visual_prompt="arrow")]
    with pytest.raises(DataError, match=r"record 0 .*field 'visual_prompt': 'arrow' is not one of"):
        build_samples(bad, template, tmp_path)
    no_mask = [{k: v for k, v in records[0].items() if k != "mask"} | {"visual_prompt": "bbox"}]
    with pytest.raises(DataError, match="field 'visual_prompt': 'bbox' shows a region"):
        build_samples(no_mask, template, tmp_path)


def test_cli_writes_the_files(tmp_path: Path) -> None:
    from finecaption_plugin.cli import main

    assert main(["synth", str(tmp_path / "cc"), "--images", "2", "--seed", "5", "--size", "64"]) == 0
    assert (tmp_path / "cc" / "compositioncap_test.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "cc" / "images").iterdir()) == ["s00000.png", "s00001.png"]
    assert main(["synth", str(tmp_path / "ll"), "--images", "1", "--format", "llava", "--size", "64"]) == 0
    records = json.loads((tmp_path / "ll" / "train.json").read_text())
    assert Image.open(tmp_path / "ll" / records[0]["image"]).size == (64, 64)
