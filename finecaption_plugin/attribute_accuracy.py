"""Attribute accuracy: how often an attribute caption states its region's true value (generated data).

Records of generated scenes (`finecaption synth`) know the truth: an AARC record carries `truth`
({attribute: value} of its entity) and `chance` (the fraction of the image's entities that share the
asked value, i.e. the accuracy of describing a randomly picked entity of the image). The value a
prediction states is read with `synth.parse_attribute`; a prediction that states none is wrong.
Records without `truth` (real CompositionCap data) are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def is_scored(sample: Mapping[str, Any]) -> bool:
    """Whether `sample` is an attribute caption whose true value is known."""
    truth = sample.get("truth")
    return isinstance(truth, Mapping) and sample.get("attribute") in truth and sample.get("chance") is not None


def verdict(sample: Mapping[str, Any]) -> dict[str, Any] | None:
    """`{"attribute", "truth", "stated", "correct"}` of a scored sample (the value its prediction states, None
    when it states none), or None when the sample's truth is unknown."""
    if not is_scored(sample):
        return None
    from .synth import parse_attribute

    attribute = sample["attribute"]
    truth = sample["truth"][attribute]
    stated = parse_attribute(attribute, str(sample.get("prediction") or ""))
    return {"attribute": attribute, "truth": truth, "stated": stated, "correct": stated == truth}


def attribute_accuracy(samples: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Accuracy overall and per attribute of `samples` ({"attribute", "truth", "chance", "prediction"}), with
    the chance level of each -> `{"overall", "chance", "count", "per_attribute": {name: {"accuracy",
    "chance", "count"}}}`, fractions in [0, 1]; None when no sample carries its truth."""
    per_attribute: dict[str, list[tuple[bool, float]]] = {}
    for sample in samples:
        outcome = verdict(sample)
        if outcome is not None:
            per_attribute.setdefault(outcome["attribute"], []).append((outcome["correct"], float(sample["chance"])))
    if not per_attribute:
        return None
    every = [outcome for outcomes in per_attribute.values() for outcome in outcomes]
    return {
        **_summary(every, "overall"),
        "per_attribute": {name: _summary(outcomes, "accuracy") for name, outcomes in sorted(per_attribute.items())},
    }


def _summary(outcomes: list[tuple[bool, float]], key: str) -> dict[str, float | int]:
    count = len(outcomes)
    return {
        key: sum(correct for correct, _ in outcomes) / count,
        "chance": sum(chance for _, chance in outcomes) / count,
        "count": count,
    }


def format_table(result: Mapping[str, Any], title: str = "attribute accuracy") -> str:
    """A plain-text table of `attribute_accuracy`'s result (percentages)."""
    rows = [(name, part["accuracy"], part["chance"], part["count"]) for name, part in result["per_attribute"].items()]
    rows.append(("overall", result["overall"], result["chance"], result["count"]))
    width = max(len(title), *(len(name) for name, *_ in rows))
    lines = [f"{title:<{width}}  accuracy  chance      n"]
    lines += [
        f"{name:<{width}}  {100 * accuracy:7.1f}%  {100 * chance:5.1f}%  {count:5d}"
        for name, accuracy, chance, count in rows
    ]
    return "\n".join(lines)
