"""The per-attribute report of a scored CompositionCap task: ``breakdown.json`` and the gallery, in one folder.

``output_dir`` names the folder beside lmms-eval's results (``OUTPUT/<model>/<date>_<task name>``);
``write_report`` writes the overall and per-attribute scores, every extra block of the scoring, and the
gallery of the first samples (from the records kept by the hooks: the JSONL is not read again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .attribute_accuracy import verdict
from .compositioncap_scoring import METRICS, TaskScores

logger = logging.getLogger(__name__)


def output_dir(args: Any, variant: str) -> Path | None:
    """``OUTPUT/<model>/<date>_<variant>`` beside lmms-eval's results, its date in lmms-eval's form and
    time zone (``--timezone``); None without an output path."""
    output_path = getattr(args, "output_path", None)
    if not output_path:
        return None
    from lmms_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lmms_eval.utils import get_datetime_str, sanitize_model_name

    model = sanitize_model_name(GeneralConfigTracker._get_model_name(str(getattr(args, "model_args", "") or "")))
    timezone = getattr(args, "timezone", None)
    date = get_datetime_str(timezone=timezone) if timezone else get_datetime_str()
    base = Path(output_path) / model / f"{date}_{variant}"
    out_dir, suffix = base, 1
    while out_dir.exists():  # a second scoring of the variant in the same second must not overwrite the first
        suffix += 1
        out_dir = base.with_name(f"{base.name}_{suffix}")
    return out_dir


def write_report(
    samples: Sequence[Mapping[str, Any]], scores: TaskScores | Mapping[str, Any], out_dir: Path, root: Path
) -> None:
    """Write ``breakdown.json`` (overall, per-attribute scores, extra blocks) and the gallery into ``out_dir``.

    ``samples`` carry ``variant``, ``style``, ``task``, ``id``, ``attribute``, ``prediction``, ``references``,
    ``image`` and ``mask`` (the image path relative to ``root``).
    """
    from .gallery import MAX_SAMPLES, write_gallery

    if not isinstance(scores, TaskScores):
        scores = TaskScores(metrics=dict(scores))
    metrics = scores.metrics
    out_dir.mkdir(parents=True)
    variant, style = samples[0]["variant"], samples[0]["style"]
    breakdown = {
        "variant": variant,
        "task": samples[0]["task"],
        "style": style,
        "samples": len(samples),
        "scores": {metric: metrics[metric] for metric in METRICS},
        "per_attribute": metrics.get("groups", {}),
        "bertscore": metrics.get("bertscore"),
        **scores.blocks,
    }
    (out_dir / "breakdown.json").write_text(json.dumps(breakdown, indent=2, ensure_ascii=False))
    per_sample = metrics.get("per_sample", {})
    gallery = [
        {
            "id": sample["id"],
            "image": sample["image"],
            "mask": sample["mask"],
            "prediction": sample["prediction"],
            "references": sample["references"],
            "scores": {metric: values[index] for metric, values in per_sample.items()},
            "group": sample["attribute"],
            "verdict": verdict(sample),
        }
        for index, sample in enumerate(samples[:MAX_SAMPLES])
    ]
    title = f"CompositionCap {variant}" + (f" (region shown as {style})" if style else "")
    write_gallery(gallery, out_dir, title=title, root=root)
    logger.info("wrote the CompositionCap breakdown and gallery to %s", out_dir)
