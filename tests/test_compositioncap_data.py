"""finecaption_plugin/compositioncap_data.py: the data folder, the record checks, masks and images."""

from __future__ import annotations

from pathlib import Path

import pytest
from compositioncap_fixtures import as_dataset, load_records

from finecaption_plugin import compositioncap
from finecaption_plugin.compositioncap import CompositionCapError, select_docs


def test_missing_root_and_file_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(compositioncap.ROOT_ENV, raising=False)
    with pytest.raises(CompositionCapError, match="COMPOSITIONCAP_ROOT is not set"):
        compositioncap.test_file()
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CompositionCapError, match="is not a folder"):
        compositioncap.test_file()
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(tmp_path))
    with pytest.raises(CompositionCapError, match="compositioncap_test.jsonl does not exist"):
        compositioncap.test_file()


@pytest.mark.parametrize(
    "index, change, message",
    [
        (0, {"mask": "not base64!"}, r"record 0 \('id' 'img0_square_color'\): field 'mask': bad base64"),
        (0, {"image": "images/missing.png"}, r"record 0 .*field 'image': .*missing.png does not exist"),
        (0, {"width": 7}, r"record 0 .*field 'image': .* the record says 7x"),
        (1, {"attribute": None}, r"record 1 .*field 'attribute': an 'aarc' record needs"),
        (2, {"captions": []}, r"record 2 .*field 'captions'"),
        (2, {"task": "dense"}, r"record 2 .*field 'task': 'dense' is not one of aarc, rdc, global"),
        (2, {"mask": None}, r"record 2 .*field 'mask': a 'rdc' record needs the region mask"),
        (6, {"mask": "H4sI"}, r"record 6 \('id' 'img0_global'\): field 'mask': a 'global' record .* must be null"),
        (3, {"id": "img0_square_color"}, r"record 3 .*field 'id': record 0 has it too"),
    ],
)
def test_bad_records_name_record_and_field(root: Path, index: int, change: dict, message: str):
    records = load_records(root)
    records[index].update(change)
    task = records[index]["task"] if records[index]["task"] in ("aarc", "rdc", "global") else "rdc"
    with pytest.raises(CompositionCapError, match=message):
        select_docs(as_dataset(records), task)


def test_a_truncated_image_is_named_although_lmms_eval_loads_truncated_images(
    root: Path, monkeypatch: pytest.MonkeyPatch
):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what lmms-eval sets on import
    path = root / load_records(root)[0]["image"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CompositionCapError, match=r"record 0 .*field 'image': .*0.png is not a readable image"):
        select_docs(as_dataset(load_records(root)), "aarc")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for lmms-eval


def test_each_mask_is_decoded_once_per_record(root: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    import finecaption_plugin.compositioncap_data as data

    load_mask = data.load_mask
    monkeypatch.setattr(data, "load_mask", lambda *a, **k: calls.append(a[0]) or load_mask(*a, **k))
    data._cached_mask.cache_clear()
    docs = select_docs(as_dataset(load_records(root)), "rdc")  # 6 records, 6 regions
    assert len(calls) == 6
    for doc in docs:
        compositioncap.doc_to_text(doc, {"visual_prompt": "bbox_text"})
        compositioncap.doc_to_visual(doc, {"visual_prompt": "mask"})
    assert len(calls) == 6 == len(set(calls))


def test_an_empty_test_file_is_named_before_lmms_eval_loads_it(root: Path):
    from finecaption_plugin.compositioncap_data import test_file

    (root / compositioncap.TEST_FILE).write_text("\n  \n")  # before: a bare StopIteration from the loader
    with pytest.raises(CompositionCapError, match=r"compositioncap_test.jsonl holds no record: it is empty"):
        test_file()


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_record_paths_stay_inside_the_data_folder_unless_allowed(root: Path, monkeypatch, where: str):
    import shutil

    records = load_records(root)
    outside = root.parent / "outside"
    outside.mkdir()
    first = records[0]
    shutil.copy(root / first["image"], outside / "secret.png")
    value = {"dotdot": "../outside/secret.png", "absolute": str(outside / "secret.png"), "symlink": "link.png"}[where]
    if where == "symlink":
        (root / "link.png").symlink_to(outside / "secret.png")
    for record in records:
        if record["image"] == first["image"]:
            record["image"] = value
    with pytest.raises(CompositionCapError, match=r"record 0 \('id' .*\): field 'image': the image path .* leads "
                       r"outside the data folder"):  # fmt: skip
        select_docs(as_dataset(records), first["task"])
    monkeypatch.setenv("FINECAPTION_ALLOW_OUTSIDE_DATA_FOLDER", "1")
    assert len(select_docs(as_dataset(records), first["task"])) > 0


def test_a_mask_file_outside_the_data_folder_is_refused(root: Path):
    records = load_records(root)
    index, record = next((i, r) for i, r in enumerate(records) if r["task"] == "rdc")
    record["mask"] = "../elsewhere/mask.png"
    with pytest.raises(CompositionCapError, match=rf"record {index} .*field 'mask': the mask path .* leads outside"):
        select_docs(as_dataset(records), "rdc")


def test_an_image_is_checked_from_its_header_before_decoding(root: Path, monkeypatch):
    records = load_records(root)
    first = records[0]
    monkeypatch.setenv("FINECAPTION_MAX_PIXELS", str(first["height"] * first["width"] - 1))
    with pytest.raises(CompositionCapError, match=r"record 0 .*field 'height': the record's image is .* over the "
                       r"limit"):  # fmt: skip
        select_docs(as_dataset(records), first["task"])
