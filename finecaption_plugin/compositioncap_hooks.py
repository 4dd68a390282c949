"""The lmms-eval hooks of the CompositionCap tasks, and the per-task state they share (``TaskState``).

The task YAMLs name these through ``tasks/compositioncap/utils.py``: ``select_docs`` (``process_docs``: the
records of one task, all checked), ``doc_to_visual``/``doc_to_text`` (the image and instruction in the
task's visual prompt style), ``process_results`` (a small sample per document) and ``aggregate`` (every
metric, scored once over the whole task, then the report).

State: lmms-eval gives each hook only its own arguments, so what one hook learns and another needs lives in
``STATE``, one ``TaskState`` per lmms-eval task name. Lifetime: ``select_docs`` starts a fresh one (a task
loaded again replaces its state); ``doc_to_visual``/``doc_to_text`` record the style; ``aggregate`` reads the
references and records, and keeps the result of the last scoring (recomputed when the predictions change).
Every process builds its own (lmms-eval runs ``process_docs`` in each), so gathered samples stay small.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .compositioncap_data import CompositionCapError, check_record, data_root, doc_image, doc_mask, test_file
from .compositioncap_scoring import ATTRIBUTE_ACCURACY, METRICS, TaskScores, score_task
from .masks import mask_to_box
from .prompts import TASKS, task_prompt
from .records import where
from .visual_prompts import VISUAL_PROMPT_STYLES, region_phrase, render_visual_prompt

logger = logging.getLogger(__name__)


@dataclass
class TaskState:
    """What the hooks of one lmms-eval task (``variant``) share, from ``select_docs`` to ``aggregate``."""

    variant: str
    task: str | None
    # id -> {"task", "attribute", "references", "image", "mask"}: kept at process_docs, so samples stay small
    # and the report needs no second read of the JSONL.
    records: dict[Any, dict] = field(default_factory=dict)
    style: str | None = None  # the visual prompt style the hooks were given (lmms_eval_specific_kwargs)
    scores_key: tuple | None = None
    scores: TaskScores | None = None


class TaskStates:
    """``TaskState`` per lmms-eval task name; see the module docstring for the lifetime."""

    def __init__(self) -> None:
        self._states: dict[str, TaskState] = {}

    def start(self, variant: str, task: str | None) -> TaskState:
        self._states[variant] = TaskState(variant, task)
        return self._states[variant]

    def get(self, variant: str) -> TaskState:
        if variant not in self._states:
            raise CompositionCapError(f"the records of {variant} were not loaded in this process (process_docs)")
        return self._states[variant]

    def find(self, variant: str | None) -> TaskState | None:
        return self._states.get(variant)

    def clear(self) -> None:
        self._states.clear()


STATE = TaskStates()


def variant_docs(variant: str) -> Callable[[Any], Any]:
    """lmms-eval ``process_docs`` of the task named ``variant``: ``compositioncap_<task>[_<suffix>]``."""
    parts = variant.split("_")
    if len(parts) < 2 or parts[0] != "compositioncap" or parts[1] not in TASKS:
        raise CompositionCapError(f"{variant!r} is not a CompositionCap task name (compositioncap_<task>[_<suffix>])")
    return functools.partial(select_docs, task=parts[1], variant=variant)


def select_docs(dataset, task: str, variant: str | None = None):
    """lmms-eval ``process_docs``: the records of ``task`` (a ``datasets.Dataset``), all checked.

    Each record gains the field ``variant`` (the lmms-eval task name; ``compositioncap_<task>`` by
    default), which names its state and scores.
    """
    variant = variant or f"compositioncap_{task}"
    root = data_root()
    seen: dict[Any, int] = {}
    image_sizes: dict[Path, tuple[int, int]] = {}
    records: dict[Any, dict] = {}
    for index, record in enumerate(dataset):
        if record.get("id") in seen:
            raise CompositionCapError(
                f"{where(index, record)}: field 'id': record {seen[record['id']]} has it too (ids are unique)"
            )
        seen[record.get("id")] = index
        if record.get("task") not in TASKS:  # a misspelt task must not silently shrink a task's set
            raise CompositionCapError(
                f"{where(index, record)}: field 'task': {record.get('task')!r} is not one of {', '.join(TASKS)}"
            )
        if record["task"] == task:
            check_record(index, record, root, image_sizes)
            records[record["id"]] = {
                "task": task,
                "attribute": record.get("attribute"),
                "references": list(record["captions"]),
                "image": record["image"],
                "mask": record.get("mask"),
                # generated data (`finecaption synth`) knows each entity's attribute values: attribute accuracy
                **{field: record[field] for field in ("truth", "chance") if record.get(field) is not None},
            }
    if not records:
        raise CompositionCapError(f"{test_file()} holds no record with task {task!r}")
    STATE.start(variant, task).records = records
    selected = dataset.filter(lambda record: record["task"] == task)
    logger.info("CompositionCap %s: %d records", variant, len(selected))
    return selected.add_column("variant", [variant] * len(selected))


def visual_prompt_style(kwargs: Mapping[str, Any] | None) -> str:
    """The visual prompt style chosen by the task's ``lmms_eval_specific_kwargs``."""
    style = (kwargs or {}).get("visual_prompt", "bbox")
    if style not in VISUAL_PROMPT_STYLES:
        raise CompositionCapError(f"visual_prompt {style!r} is not one of {', '.join(VISUAL_PROMPT_STYLES)}")
    return style


def doc_to_visual(doc: Mapping[str, Any], kwargs: Mapping[str, Any] | None = None) -> list[Image.Image]:
    """The image shown in the task's visual prompt style (``mask``: RGBA, the mask in the alpha channel)."""
    image, _ = render_visual_prompt(doc_image(doc), doc_mask(doc), _style(doc, kwargs), "")
    return [image]


def doc_to_text(doc: Mapping[str, Any], kwargs: Mapping[str, Any] | None = None) -> str:
    """The task instruction, naming the region the way the visual prompt style shows it."""
    mask = doc_mask(doc)
    if mask is None:
        return task_prompt(doc["task"], doc.get("attribute"))
    region = region_phrase(_style(doc, kwargs), mask_to_box(mask), (doc["width"], doc["height"]))
    return task_prompt(doc["task"], doc.get("attribute"), region=region)


def _style(doc: Mapping[str, Any], kwargs: Mapping[str, Any] | None) -> str:
    """The style of ``kwargs``, remembered in the doc's task state: lmms-eval resolves a task's
    ``lmms_eval_specific_kwargs`` per model and shows them only to these two hooks, not to scoring."""
    style = visual_prompt_style(kwargs)
    state = STATE.find(doc.get("variant"))
    if state is not None:
        state.style = style
    return style


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, dict]:
    """The same small sample for every metric (lmms-eval logs each metric's value: the references
    would be stored five times); the scores come from ``aggregate`` over the whole task."""
    state = STATE.find(doc["variant"])
    sample = {
        "variant": doc["variant"],
        "style": state.style if state is not None and doc.get("mask") is not None else None,  # None: no region
        "id": doc["id"],
        "attribute": doc.get("attribute"),  # `finecaption score LOG --group-field attribute` reads it here
        "prediction": results[0] if results else "",
    }
    metrics = (*METRICS, ATTRIBUTE_ACCURACY) if doc.get("task") == "aarc" else METRICS
    return dict.fromkeys(metrics, sample)


def aggregator(metric: str) -> Callable[..., float]:
    """lmms-eval ``aggregation`` of ``metric``: ``aggregate`` with the metric bound (``utils.py`` names one each)."""

    def aggregate_metric(samples: Sequence[Mapping[str, Any]], args: Any = None) -> float:
        return aggregate(samples, metric, args)

    aggregate_metric.__qualname__ = aggregate_metric.__name__ = f"aggregate_{metric}"
    return aggregate_metric


def aggregate(samples: Sequence[Mapping[str, Any]], metric: str, args: Any = None) -> float:
    """``metric`` over all ``samples`` of a task; scores every metric once, writes the report once.

    A failure here comes after the model has answered everything: it is logged and the metric is NaN,
    so that lmms-eval still saves the results and the samples log (rescore it with ``finecaption score``).
    """
    from .compositioncap_report import output_dir, write_report

    variant, style = samples[0]["variant"], samples[0]["style"]
    key = (style, tuple((s["id"], s["prediction"]) for s in samples))
    state = STATE.find(variant) or STATE.start(variant, task=None)  # not loaded here: scoring fails, once
    if state.scores_key != key:
        state.scores_key = key
        try:
            if not state.records:
                raise CompositionCapError(f"the records of {variant} were not loaded in this process (process_docs)")
            full = [{**state.records[sample["id"]], **sample} for sample in samples]
            state.scores = score_task(full)
        except Exception:
            logger.exception("scoring CompositionCap %s failed: its metrics are NaN", variant)
            state.scores = TaskScores(metrics={})
            return float("nan")
        out_dir = output_dir(args, variant)
        if out_dir is not None:
            try:
                write_report(full, state.scores, out_dir, root=data_root())
            except Exception:
                logger.exception("could not write the CompositionCap %s breakdown and gallery to %s", variant, out_dir)
    if metric == ATTRIBUTE_ACCURACY:  # x100 like the caption metrics; NaN for data without the truth
        block = state.scores.blocks.get(ATTRIBUTE_ACCURACY)
        return 100 * block["overall"] if block else float("nan")
    return state.scores.metrics.get(metric, float("nan"))
