"""Attribute accuracy of generated data: the stated value read from each prediction, against the record's truth."""

import pytest

from finecaption_plugin.attribute_accuracy import (
    NO_VALUE,
    attribute_accuracy,
    confusions,
    format_confusions,
    format_table,
    verdict,
)
from finecaption_plugin.synth import compositioncap_records, make_scene


def sample(attribute, truth, prediction, chance=0.25):
    return {"attribute": attribute, "truth": {attribute: truth}, "chance": chance, "prediction": prediction}


def test_accuracy_per_attribute_and_overall_with_chance():
    samples = [
        sample("color", "red", "The star is red.", chance=0.5),
        sample("color", "red", "The star is blue.", chance=0.5),
        sample("color", "green", "", chance=0.5),  # states nothing: wrong
        sample("materials/texture", "striped", "It has a striped texture.", chance=0.2),
        {"attribute": "color", "prediction": "red", "truth": None, "chance": None},  # real data: not counted
        {"attribute": None, "prediction": "A scene.", "truth": None},
    ]
    result = attribute_accuracy(samples)
    assert result["count"] == 4
    assert result["overall"] == pytest.approx(2 / 4)
    assert result["chance"] == pytest.approx((0.5 * 3 + 0.2) / 4)
    color = result["per_attribute"]["color"]
    assert (color["accuracy"], color["chance"], color["count"]) == (pytest.approx(1 / 3), 0.5, 3)
    assert result["per_attribute"]["materials/texture"]["accuracy"] == 1.0
    table = format_table(result)
    assert "overall" in table and "33.3%" in table and "50.0%" in table


def test_per_value_rows_count_what_each_true_value_was_read_as():
    samples = [
        *(sample("materials/texture", "striped", "The star is checkered.") for _ in range(3)),
        sample("materials/texture", "striped", "The star is striped."),
        sample("materials/texture", "striped", "A star."),  # states no texture
        sample("materials/texture", "checkered", "The star is striped."),
        sample("materials/texture", "solid", "The star is solid."),
    ]
    per_value = attribute_accuracy(samples)["per_attribute"]["materials/texture"]["per_value"]
    assert per_value["striped"] == {
        "accuracy": pytest.approx(1 / 5), "count": 5, "stated": {"checkered": 3, NO_VALUE: 1, "striped": 1},
    }  # fmt: skip
    assert per_value["checkered"] == {"accuracy": 0.0, "count": 1, "stated": {"striped": 1}}
    assert per_value["solid"]["accuracy"] == 1.0
    assert sum(row["count"] for row in per_value.values()) == len(samples)
    assert confusions(per_value, top=2) == [("striped", "checkered", 3, 5), ("checkered", "striped", 1, 1)]
    text = format_confusions({"materials/texture": {"per_value": per_value}, "color": {"per_value": {}}})
    assert "materials/texture: striped -> checkered: 3 of 5; checkered -> striped: 1 of 1" in text
    assert "color: none" in text


def test_no_truth_no_block():
    assert attribute_accuracy([{"attribute": "color", "prediction": "red"}]) is None


def test_verdict_names_the_stated_value():
    assert verdict(sample("color", "red", "It is a blue square next to the red star.")) == {
        "attribute": "color", "truth": "red", "stated": "blue", "correct": False,
    }  # fmt: skip
    assert verdict({"attribute": "color", "prediction": "red"}) is None


def test_generated_references_score_perfectly():
    scene = make_scene(seed=5, index=0)
    records = [r for r in compositioncap_records(scene) if r["task"] == "aarc" and r.get("chance") is not None]
    samples = [{**record, "prediction": record["captions"][0]} for record in records]
    result = attribute_accuracy(samples)
    assert result["overall"] == 1.0 and result["count"] == len(records)
    assert 0 < result["chance"] <= 1
