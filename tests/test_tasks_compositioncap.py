"""The CompositionCap tasks: data checks, visual prompts, prompts, task YAML resolution, scoring."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import datasets
import numpy as np
import pytest

from finecaption_plugin import compositioncap
from finecaption_plugin.cli import tasks_dir
from finecaption_plugin.compositioncap import CompositionCapError, select_docs, write_demo_folder
from finecaption_plugin.masks import decode_compositioncap, mask_to_box
from finecaption_plugin.visual_prompts import MARK_COLOR, VISUAL_PROMPT_STYLES


@pytest.fixture()
def root(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "compositioncap"
    write_demo_folder(folder, images=3)
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(folder))
    # lmms-eval reads this once per process: one folder for the session, outside the user's cache.
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "datasets-cache"))
    return folder


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / compositioncap.TEST_FILE).read_text().splitlines()]


def _dataset(records: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(records)


def _first(root: Path, task: str) -> dict:
    return next(record for record in _records(root) if record["task"] == task)


def test_demo_folder_selects_every_task(root: Path):
    dataset = _dataset(_records(root))
    assert {task: len(select_docs(dataset, task)) for task in ("aarc", "rdc", "global")} == {
        "aarc": 12,
        "rdc": 6,
        "global": 3,
    }
    assert set(select_docs(dataset, "aarc")["attribute"]) == {"color", "shape"}


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
    records = _records(root)
    records[index].update(change)
    task = records[index]["task"] if records[index]["task"] in ("aarc", "rdc", "global") else "rdc"
    with pytest.raises(CompositionCapError, match=message):
        select_docs(_dataset(records), task)


def test_a_truncated_image_is_named_although_lmms_eval_loads_truncated_images(
    root: Path, monkeypatch: pytest.MonkeyPatch
):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what lmms-eval sets on import
    path = root / _records(root)[0]["image"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CompositionCapError, match=r"record 0 .*field 'image': .*0.png is not a readable image"):
        select_docs(_dataset(_records(root)), "aarc")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for lmms-eval


def test_each_mask_is_decoded_once_per_record(root: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    import finecaption_plugin.compositioncap_data as data

    load_mask = data.load_mask
    monkeypatch.setattr(data, "load_mask", lambda *a, **k: calls.append(a[0]) or load_mask(*a, **k))
    data._cached_mask.cache_clear()
    docs = select_docs(_dataset(_records(root)), "rdc")  # 6 records, 6 regions
    assert len(calls) == 6
    for doc in docs:
        compositioncap.doc_to_text(doc, {"visual_prompt": "bbox_text"})
        compositioncap.doc_to_visual(doc, {"visual_prompt": "mask"})
    assert len(calls) == 6 == len(set(calls))


def test_every_style_renders_from_the_cached_mask(root: Path):
    doc = _first(root, "aarc")
    for style in VISUAL_PROMPT_STYLES:  # the cached mask is read-only: no renderer may write into it
        (image,) = compositioncap.doc_to_visual(doc, {"visual_prompt": style})
        width, height = image.size  # a tuple's <= is lexicographic: each side on its own
        if style == "crop":  # the region's box grown by its size per side, within the image
            assert 0 < width <= doc["width"] and 0 < height <= doc["height"]
        else:
            assert (width, height) == (doc["width"], doc["height"])


def test_an_error_in_another_task_does_not_block(root: Path):
    records = _records(root)
    records[0]["mask"] = "not base64!"  # an aarc record
    assert len(select_docs(_dataset(records), "global")) == 3


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
    doc = _first(root, "aarc")
    assert compositioncap.doc_to_text(doc, {"visual_prompt": style}) == f"Describe the color of {phrase}."


def test_bbox_text_prompt_carries_the_normalised_box(root: Path):
    doc = _first(root, "rdc")
    text = compositioncap.doc_to_text(doc, {"visual_prompt": "bbox_text"})
    numbers = [float(v) for v in re.search(r"\[([^\]]+)\]", text).group(1).split(",")]
    x0, y0, x1, y1 = mask_to_box(decode_compositioncap(doc["mask"], doc["height"], doc["width"]))
    expected = [x0 / doc["width"], y0 / doc["height"], x1 / doc["width"], y1 / doc["height"]]
    np.testing.assert_allclose(numbers, expected, atol=5e-4)


def test_global_prompt_ignores_the_style(root: Path):
    doc = _first(root, "global")
    for style in ("mask", "bbox", "crop"):
        assert compositioncap.doc_to_text(doc, {"visual_prompt": style}) == "Describe the image in detail."
        (image,) = compositioncap.doc_to_visual(doc, {"visual_prompt": style})
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(compositioncap.doc_image(doc)))


def test_mask_style_carries_the_mask_in_alpha(root: Path):
    doc = _first(root, "aarc")
    (image,) = compositioncap.doc_to_visual(doc, {"visual_prompt": "mask"})
    mask = decode_compositioncap(doc["mask"], doc["height"], doc["width"])
    assert image.mode == "RGBA"
    assert np.array_equal(np.asarray(image.getchannel("A")) > 0, mask)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(compositioncap.doc_image(doc)))


def test_bbox_style_draws_a_red_box_around_the_region(root: Path):
    doc = _first(root, "rdc")
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
        compositioncap.doc_to_text(_first(root, "aarc"), {"visual_prompt": "arrow"})


@pytest.fixture(scope="module")
def task_manager():
    """One index of lmms-eval's tasks (slow to build) with the shipped tasks in it, without --include_path."""
    from lmms_eval.tasks import TaskManager

    from finecaption_plugin.lmms_eval_manifest import patch_lmms_eval

    patch_lmms_eval()
    return TaskManager()


@pytest.mark.parametrize(
    "name, model, style",
    [
        ("compositioncap_aarc", "finecaption", "mask"),
        ("compositioncap_aarc", "llava_hf", "bbox"),
        ("compositioncap_rdc_contour", "finecaption", "contour"),
        ("compositioncap_aarc_bbox_text", "qwen2_5_vl", "bbox_text"),
    ],
)
def test_yaml_picks_the_style_per_model_and_variant(
    root: Path, task_manager, monkeypatch: pytest.MonkeyPatch, name: str, model: str, style: str
):
    from lmms_eval.tasks import get_task_dict

    monkeypatch.setattr(task_manager, "model_name", model)  # what `--model` sets
    (task,) = get_task_dict([name], task_manager).values()
    assert task.lmms_eval_specific_kwargs["visual_prompt"] == style
    docs = task.test_docs()
    assert {doc["task"] for doc in docs} == {name.split("_")[1]} and set(docs["variant"]) == {name}
    assert task.doc_to_text(docs[0]).endswith(".")


def test_aggregate_scores_once_and_writes_breakdown_and_gallery(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import finecaption_plugin.metrics as metrics

    calls = []
    caption_scores = metrics.caption_scores

    def counted(*args, **kwargs):
        calls.append((args, kwargs, caption_scores(*args, **kwargs)))
        return calls[-1][-1]

    monkeypatch.setattr(metrics, "caption_scores", counted)
    docs = select_docs(_dataset(_records(root)), "aarc")
    samples = [compositioncap.process_results(doc, [doc["captions"][0]])["CIDEr"] for doc in docs]
    samples[0] = dict(samples[0], prediction="something else entirely")
    args = Namespace(output_path=str(tmp_path / "out"), model_args="pretrained=/models/tiny")
    values = {metric: compositioncap.aggregate(samples, metric, args) for metric in compositioncap.METRICS}
    ((inputs, options, scores),) = calls
    assert inputs == ([s["prediction"] for s in samples], [doc["captions"] for doc in docs])
    assert options["groups"] == [doc["attribute"] for doc in docs]
    assert values == {metric: scores[metric] for metric in compositioncap.METRICS}
    assert 0 < values["CIDEr"] and values["BLEU-4"] < 100  # one wrong prediction among exact ones
    (out_dir,) = (tmp_path / "out" / "models__tiny").iterdir()
    assert re.fullmatch(r"\d{8}_\d{6}_compositioncap_aarc", out_dir.name)  # lmms-eval's date form
    breakdown = json.loads((out_dir / "breakdown.json").read_text())
    assert breakdown["samples"] == 12 and set(breakdown["per_attribute"]) == {"color", "shape"}
    assert (out_dir / "index.html").is_file() and (out_dir / "gallery.png").is_file()
    assert "something else entirely" in (out_dir / "index.html").read_text()


def test_nested_form_flattens_to_checked_records(root: Path, tmp_path: Path):
    flat = _records(root)[:7]  # image 0: square (color, shape, dense), circle (same), global
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
    converted = _records(root)
    key = lambda r: (r["task"], r["attribute"] or "", r["captions"][0])  # noqa: E731
    assert sorted(map(key, converted)) == sorted(map(key, flat))
    assert {r["id"] for r in converted} >= {"img0_square_color", "img0_circle_dense", "img0_global"}
    for task in ("aarc", "rdc", "global"):
        select_docs(_dataset(converted), task)  # every record passes the checks


def test_nested_entity_without_mask_is_named(tmp_path: Path):
    with pytest.raises(CompositionCapError, match=r"image record 0 \('id' 'a'\): field 'entities\[1\]'"):
        compositioncap.flatten_image(
            0, {"image": "a.png", "height": 2, "width": 2, "entities": [{"id": 1, "mask": "x"}, {"id": 2}]}
        )


def test_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    from finecaption_plugin.cli import main

    assert main(["compositioncap-demo", str(tmp_path / "demo"), "--images", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "demo" / compositioncap.TEST_FILE)
    assert len(_records(tmp_path / "demo")) == 14


def test_a_scoring_failure_keeps_the_run(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    import finecaption_plugin.gallery as gallery
    import finecaption_plugin.metrics as metrics

    docs = select_docs(_dataset(_records(root)), "rdc")
    samples = [compositioncap.process_results(doc, [f"answer {i}"])["METEOR"] for i, doc in enumerate(docs)]
    calls = []

    def no_java(*args, **kwargs):
        calls.append(1)
        raise metrics.JavaNotFoundError("no java")

    monkeypatch.setattr(metrics, "caption_scores", no_java)
    values = [compositioncap.aggregate(samples, metric) for metric in compositioncap.METRICS]
    assert len(calls) == 1 and all(np.isnan(values))
    assert "scoring CompositionCap compositioncap_rdc failed" in caplog.text

    def broken_gallery(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(metrics, "caption_scores", lambda *a, **k: dict.fromkeys(compositioncap.METRICS, 1.0))
    monkeypatch.setattr(gallery, "write_gallery", broken_gallery)
    args = Namespace(output_path=str(tmp_path / "out"), model_args="pretrained=tiny")
    samples[0] = dict(samples[0], prediction="another answer")
    assert compositioncap.aggregate(samples, "CIDEr", args) == 1.0
    assert "could not write the CompositionCap compositioncap_rdc breakdown and gallery" in caplog.text
    (out_dir,) = (tmp_path / "out" / "tiny").iterdir()
    assert json.loads((out_dir / "breakdown.json").read_text())["scores"]["CIDEr"] == 1.0


def test_two_variants_with_equal_answers_each_get_their_breakdown(root: Path, tmp_path: Path):
    dataset = _dataset(_records(root))
    args = Namespace(output_path=str(tmp_path / "out"), model_args="pretrained=tiny", timezone="UTC")
    for variant, style in (("compositioncap_rdc", "mask"), ("compositioncap_rdc_bbox", "bbox")):
        docs = compositioncap.variant_docs(variant)(dataset)
        assert set(docs["variant"]) == {variant}
        samples = []
        for doc in docs:
            compositioncap.doc_to_text(doc, {"visual_prompt": style})  # lmms-eval builds the requests
            samples.append(compositioncap.process_results(doc, ["the same answer"])["BLEU-4"])
        assert compositioncap.aggregate(samples, "BLEU-4", args) >= 0
    breakdowns = {
        path.parent.name.split("_", 2)[2]: json.loads(path.read_text())
        for path in (tmp_path / "out" / "tiny").glob("*/breakdown.json")
    }
    assert {name: (b["variant"], b["task"], b["style"]) for name, b in breakdowns.items()} == {
        "compositioncap_rdc": ("compositioncap_rdc", "rdc", "mask"),
        "compositioncap_rdc_bbox": ("compositioncap_rdc_bbox", "rdc", "bbox"),
    }


def test_a_sample_carries_no_references(root: Path):
    doc = next(iter(compositioncap.variant_docs("compositioncap_global")(_dataset(_records(root)))))
    metrics = compositioncap.process_results(doc, ["an answer"])
    assert list(metrics) == list(compositioncap.METRICS)
    assert all(value == {"variant": "compositioncap_global", "style": None, "id": doc["id"], "attribute": None,
                         "prediction": "an answer"} for value in metrics.values())  # fmt: skip


def test_task_names_outside_compositioncap_are_refused():
    with pytest.raises(CompositionCapError, match="'compositioncap_dense' is not a CompositionCap task name"):
        compositioncap.variant_docs("compositioncap_dense")


def _task_module(name: str):
    """A module of the task folder, executed from its file as lmms-eval's ``!function`` does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(tasks_dir()) / "compositioncap" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shipped_task_names_its_own_docs():
    utils = _task_module("utils")
    assert not hasattr(utils, "__getattr__")  # explicit functions, none made up on lookup
    for path in sorted((Path(tasks_dir()) / "compositioncap").glob("compositioncap_*.yaml")):
        task = re.search(r"^task: (\S+)$", path.read_text(), re.M)
        if task:  # groups list their tasks
            assert f"process_docs: !function utils.{task.group(1)}_docs" in path.read_text(), path.name
        for function in re.findall(r"!function utils\.(\w+)", path.read_text()):
            assert callable(getattr(utils, function)), (path.name, function)


def test_the_checked_in_yamls_are_what_the_generator_writes(tmp_path: Path):
    folder = Path(tasks_dir()) / "compositioncap"
    command = [sys.executable, str(folder / "_generate_config.py"), str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True)
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(_task_module("_generate_config").configs())
    assert set(written) >= {path.name for path in folder.glob("*.yaml")}  # no YAML kept by hand beside them
    for name in written:
        assert (folder / name).read_bytes() == (tmp_path / name).read_bytes(), f"{name}: run _generate_config.py"


def test_each_task_s_metrics_are_the_generator_s_and_aggregate_through_utils():
    generator, utils = _task_module("_generate_config"), _task_module("utils")
    assert set(generator.TASK_METRICS) == {"aarc", "rdc", "global"}
    for metrics in generator.TASK_METRICS.values():
        assert metrics[: len(compositioncap.METRICS)] == list(compositioncap.METRICS)  # Table 2's, then the task's
        for metric in metrics:
            assert callable(getattr(utils, generator.aggregation_function(metric))), metric
    assert [generator.aggregation_function(name) for name in ("ROUGE-L", "BLEU-4")] == ["rouge_l", "bleu_4"]


def test_the_data_folder_is_needed_only_when_a_task_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lmms_eval import utils as lmms_utils

    monkeypatch.delenv(compositioncap.ROOT_ENV, raising=False)
    paths = sorted((Path(tasks_dir()) / "compositioncap").glob("compositioncap*.yaml"))
    for path in paths:  # how lmms-eval indexes the folder: tags not executed
        assert lmms_utils.load_yaml_config(str(path), mode="simple")
    _task_module("utils")  # the hooks' module needs no data folder
    aarc = str(Path(tasks_dir()) / "compositioncap" / "compositioncap_aarc.yaml")
    with pytest.raises(CompositionCapError, match="COMPOSITIONCAP_ROOT is not set"):
        lmms_utils.load_yaml_config(aarc, mode="full")  # how lmms-eval loads a task it runs
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(tmp_path))
    with pytest.raises(CompositionCapError, match="compositioncap_test.jsonl does not exist"):
        lmms_utils.load_yaml_config(aarc, mode="full")
    write_demo_folder(tmp_path, images=1)
    config = lmms_utils.load_yaml_config(aarc, mode="full")
    assert config["dataset_kwargs"]["data_files"] == {"test": str(tmp_path / compositioncap.TEST_FILE)}


@pytest.mark.parametrize("name", ["compositioncap_rdc", "compositioncap_global", "compositioncap_rdc_contour"])
def test_paragraph_tasks_do_not_stop_at_a_blank_line(root: Path, task_manager, name: str):
    from lmms_eval.tasks import get_task_dict

    (task,) = get_task_dict([name], task_manager).values()
    assert task.config.generation_kwargs["until"] == []


def test_the_readme_s_copied_task_yaml_resolves(root: Path, tmp_path: Path):
    from lmms_eval.tasks import TaskManager, get_task_dict

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (snippet,) = [block for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "_mine" in block]
    (hooks,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "_mine_docs" in block]
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    placeholder = "/path/printed/by/finecaption-tasks-dir"
    assert placeholder in snippet
    (folder / "compositioncap_rdc_mine.yaml").write_text(snippet.replace(placeholder, tasks_dir()))
    (folder / "utils.py").write_text(hooks)
    for model, phrase in (("qwen2_5_vl", "outlined in red"), ("llava_hf", "inside the red box")):
        manager = TaskManager(include_path=str(folder), model_name=model)
        (task,) = get_task_dict(["compositioncap_rdc_mine"], manager).values()
        docs = task.test_docs()
        assert len(docs) == 6 and set(docs["variant"]) == {"compositioncap_rdc_mine"}
        assert phrase in task.doc_to_text(docs[0])


# Hostile input (issue 12)


def test_an_empty_test_file_is_named_before_lmms_eval_loads_it(root: Path):
    from finecaption_plugin.compositioncap_data import test_file

    (root / compositioncap.TEST_FILE).write_text("\n  \n")  # before: a bare StopIteration from the loader
    with pytest.raises(CompositionCapError, match=r"compositioncap_test.jsonl holds no record: it is empty"):
        test_file()


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_record_paths_stay_inside_the_data_folder_unless_allowed(root: Path, monkeypatch, where: str):
    import shutil

    records = _records(root)
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
        select_docs(_dataset(records), first["task"])
    monkeypatch.setenv("FINECAPTION_ALLOW_OUTSIDE_DATA_FOLDER", "1")
    assert len(select_docs(_dataset(records), first["task"])) > 0


def test_a_mask_file_outside_the_data_folder_is_refused(root: Path):
    records = _records(root)
    index, record = next((i, r) for i, r in enumerate(records) if r["task"] == "rdc")
    record["mask"] = "../elsewhere/mask.png"
    with pytest.raises(CompositionCapError, match=rf"record {index} .*field 'mask': the mask path .* leads outside"):
        select_docs(_dataset(records), "rdc")


def test_an_image_is_checked_from_its_header_before_decoding(root: Path, monkeypatch):
    records = _records(root)
    first = records[0]
    monkeypatch.setenv("FINECAPTION_MAX_PIXELS", str(first["height"] * first["width"] - 1))
    with pytest.raises(CompositionCapError, match=r"record 0 .*field 'height': the record's image is .* over the "
                       r"limit"):  # fmt: skip
        select_docs(_dataset(records), first["task"])


def test_attribute_accuracy_of_generated_data_in_the_table_breakdown_and_gallery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from finecaption_plugin.synth import write_synth

    folder = tmp_path / "synth"
    write_synth(folder, 2, seed=3)
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(folder))
    records = [json.loads(line) for line in (folder / compositioncap.TEST_FILE).read_text().splitlines()]
    docs = select_docs(_dataset(records), "aarc")
    colors = [doc for doc in docs if doc["attribute"] == "color"]
    wrong = colors[0]["id"]  # the first color answer names a colour the entity does not have
    other = next(c for c in ("red", "blue") if c != colors[0]["truth"]["color"])
    results = [
        compositioncap.process_results(doc, [f"It is {other}." if doc["id"] == wrong else doc["captions"][0]])
        for doc in docs
    ]
    assert all(set(result) == {*compositioncap.METRICS, "attribute_accuracy"} for result in results)
    samples = [result["attribute_accuracy"] for result in results]
    args = Namespace(output_path=str(tmp_path / "out"), model_args="pretrained=/models/demo")
    scored = [doc for doc in docs if doc.get("chance") is not None]
    value = compositioncap.aggregate(samples, "attribute_accuracy", args)
    assert value == pytest.approx(100 * (len(scored) - 1) / len(scored))
    (out_dir,) = (tmp_path / "out" / "models__demo").iterdir()
    block = json.loads((out_dir / "breakdown.json").read_text())["attribute_accuracy"]
    assert block["per_attribute"]["color"]["accuracy"] == pytest.approx((len(colors) - 1) / len(colors))
    assert block["count"] == len(scored) and 0 < block["chance"] < 1
    page = (out_dir / "index.html").read_text()
    assert f"says {other}, is {colors[0]['truth']['color']}" in page and 'class="card right"' in page
    # rdc records carry no attribute question: no attribute accuracy there
    rdc = select_docs(_dataset(records), "rdc")
    assert "attribute_accuracy" not in compositioncap.process_results(rdc[0], ["x"])
