"""The CompositionCap record schema (finecaption_plugin/records.py): one rule, one reader, used everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
