"""Attribute accuracy: how often an attribute caption states its region's true value (generated data).

Records of generated scenes (`finecaption synth`) know the truth: an AARC record carries `truth`
({attribute: value} of its entity) and `chance` (the fraction of the image's entities that share the
asked value, i.e. the accuracy of describing a randomly picked entity of the image). The value a
prediction states is read with `synth.parse_attribute`; a prediction that states none is wrong.
Records without `truth` (real CompositionCap data) are not counted. Per true value, the values the
predictions stated (a confusion row) show which values the model mixes up.
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


NO_VALUE = "(no value)"  # the `stated` key of predictions that state no value of the attribute


def attribute_accuracy(samples: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Accuracy overall and per attribute of `samples` ({"attribute", "truth", "chance", "prediction"}), with
    the chance level of each -> `{"overall", "chance", "count", "per_attribute": {name: {"accuracy",
    "chance", "count", "per_value"}}}`, fractions in [0, 1]; None when no sample carries its truth.

    `per_value`: `{true value: {"accuracy", "count", "stated": {stated value or NO_VALUE: count}}}`."""
    per_attribute: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        outcome = verdict(sample)
        if outcome is not None:
            per_attribute.setdefault(outcome["attribute"], []).append({**outcome, "chance": float(sample["chance"])})
    if not per_attribute:
        return None
    every = [outcome for outcomes in per_attribute.values() for outcome in outcomes]
    return {
        **_summary(every, "overall"),
        "per_attribute": {
            name: {**_summary(outcomes, "accuracy"), "per_value": _per_value(outcomes)}
            for name, outcomes in sorted(per_attribute.items())
        },
    }


def _summary(outcomes: list[dict[str, Any]], key: str) -> dict[str, float | int]:
    count = len(outcomes)
    return {
        key: sum(outcome["correct"] for outcome in outcomes) / count,
        "chance": sum(outcome["chance"] for outcome in outcomes) / count,
        "count": count,
    }


def _per_value(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for outcome in sorted(outcomes, key=lambda outcome: outcome["truth"]):
        row = rows.setdefault(outcome["truth"], {"correct": 0, "count": 0, "stated": {}})
        stated = outcome["stated"] if outcome["stated"] is not None else NO_VALUE
        row["correct"] += outcome["correct"]
        row["count"] += 1
        row["stated"][stated] = row["stated"].get(stated, 0) + 1
    return {
        truth: {"accuracy": row["correct"] / row["count"], "count": row["count"],
                "stated": dict(sorted(row["stated"].items(), key=lambda item: (-item[1], item[0])))}
        for truth, row in rows.items()
    }  # fmt: skip


def confusions(per_value: Mapping[str, Mapping[str, Any]], top: int = 3) -> list[tuple[str, str, int, int]]:
    """The `top` most frequent mistakes in one attribute's `per_value`: `(truth, stated, count, truth's count)`,
    most frequent first."""
    mistakes = [
        (truth, stated, count, row["count"])
        for truth, row in per_value.items()
        for stated, count in row["stated"].items()
        if stated != truth
    ]
    return sorted(mistakes, key=lambda mistake: (-mistake[2], mistake[0], mistake[1]))[:top]


def format_confusions(per_attribute: Mapping[str, Mapping[str, Any]], top: int = 3) -> str:
    """One line per attribute of `attribute_accuracy`'s `per_attribute`: its `top` most frequent mistakes."""
    lines = ["most frequent mistakes (true value -> stated value: count of the true value's n)"]
    for name, part in per_attribute.items():
        mistakes = confusions(part["per_value"], top)
        listed = "; ".join(f"{truth} -> {stated}: {count} of {n}" for truth, stated, count, n in mistakes)
        lines.append(f"  {name}: {listed or 'none'}")
    return "\n".join(lines)


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
