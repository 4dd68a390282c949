"""finecaption_plugin/compositioncap_report.py (with compositioncap_scoring.py): scores, breakdown, gallery."""

from __future__ import annotations

import json
import re
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from compositioncap_fixtures import as_dataset, load_records

from finecaption_plugin import compositioncap
from finecaption_plugin.compositioncap import select_docs


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
    docs = select_docs(as_dataset(load_records(root)), "aarc")
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


def test_a_scoring_failure_keeps_the_run(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    import finecaption_plugin.gallery as gallery
    import finecaption_plugin.metrics as metrics

    docs = select_docs(as_dataset(load_records(root)), "rdc")
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
    dataset = as_dataset(load_records(root))
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


def test_attribute_accuracy_of_generated_data_in_the_table_breakdown_and_gallery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from finecaption_plugin.synth import write_synth

    folder = tmp_path / "synth"
    write_synth(folder, 2, seed=3)
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(folder))
    records = [json.loads(line) for line in (folder / compositioncap.TEST_FILE).read_text().splitlines()]
    docs = select_docs(as_dataset(records), "aarc")
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
    rdc = select_docs(as_dataset(records), "rdc")
    assert "attribute_accuracy" not in compositioncap.process_results(rdc[0], ["x"])
