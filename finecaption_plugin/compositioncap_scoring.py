"""Scores of one CompositionCap task: the paper's Table 2 metrics, and room for more blocks per task.

``score_task`` turns the samples of a task (prediction, references, task, attribute, ...) into a
``TaskScores``: ``metrics`` (``metrics.caption_scores``' result: the five ``METRICS``, per attribute under
``groups`` for AARC, per sample, the BERTScore setting) and ``blocks``, named extra results computed by
the functions of ``BLOCKS`` (each gets the samples and returns a JSON-able dict, or None when it does not
apply); the report writes every block into ``breakdown.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .attribute_accuracy import attribute_accuracy
from .metrics.scores import TABLE_METRICS

# The metric names of the task YAMLs (lmms-eval's metric_list), keys of ``metrics.caption_scores``' result.
METRICS: tuple[str, ...] = TABLE_METRICS

Block = Callable[[Sequence[Mapping[str, Any]]], "dict | None"]
# The AARC metric (and breakdown.json block) of generated data: how often a caption states the true value.
ATTRIBUTE_ACCURACY = "attribute_accuracy"
# Name -> function of the extra blocks scored for every task.
BLOCKS: dict[str, Block] = {ATTRIBUTE_ACCURACY: attribute_accuracy}


@dataclass
class TaskScores:
    """The scores of one task: the caption metrics and the extra blocks, by name."""

    metrics: dict[str, Any]
    blocks: dict[str, dict] = field(default_factory=dict)


def score_task(samples: Sequence[Mapping[str, Any]]) -> TaskScores:
    """Caption metrics over ``samples`` (grouped by attribute for AARC) and every applicable block of ``BLOCKS``."""
    from .metrics import caption_scores

    groups = [s["attribute"] for s in samples] if samples[0]["task"] == "aarc" else None
    metrics = caption_scores(
        [s["prediction"] for s in samples], [s["references"] for s in samples], metrics=METRICS, groups=groups
    )
    blocks = {name: block for name, function in BLOCKS.items() if (block := function(samples)) is not None}
    return TaskScores(metrics=metrics, blocks=blocks)
