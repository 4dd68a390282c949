"""CompositionCap for lmms-eval: the data folder, its checks, visuals, prompts and scoring.

The task folder ``finecaption_plugin/tasks/compositioncap`` holds only YAML and a thin ``utils.py``
(lmms-eval re-executes that file for every ``!function`` tag); the work is done here.

Data: a folder named by ``$COMPOSITIONCAP_ROOT`` holding ``compositioncap_test.jsonl``, one record a
line, and the images::

    {"id": "e12_color",           # unique in the file
     "image": "images/0001.jpg",  # relative to the folder
     "height": 768, "width": 1024,
     "mask": "H4sIAAAA...",       # CompositionCap's base64(gzip(uint8 H*W)); null for "global"
     "task": "aarc",              # "aarc" | "rdc" | "global"
     "attribute": "color",        # "aarc" only
     "captions": ["The car is a deep red ..."]}

Every record of a task is checked before the model runs (fields, image present and of the stated
size, mask decodable and non-empty); errors name the record (its line, counting from 0), its id and
the field. Scores: the five Table 2 metrics of ``finecaption_plugin.metrics`` over the whole task,
computed once; with ``--output_path`` a per-attribute breakdown (``breakdown.json``) and a gallery
(``index.html``, ``gallery.png``) go to ``OUTPUT/<model>/<date>_compositioncap_<task>/``.

Commands: ``finecaption compositioncap-demo DIR`` writes a small synthetic folder for smoke runs;
``finecaption compositioncap-convert IN OUT`` flattens the per-image nested form (``flatten_image``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .masks import MaskError, load_mask, mask_to_box
from .prompts import TASKS, task_prompt
from .visual_prompts import VISUAL_PROMPT_STYLES, region_phrase, render_visual_prompt

logger = logging.getLogger(__name__)

ROOT_ENV = "COMPOSITIONCAP_ROOT"
TEST_FILE = "compositioncap_test.jsonl"
METRICS: tuple[str, ...] = ("ROUGE-L", "BLEU-4", "METEOR", "CIDEr", "BERTScore")


class CompositionCapError(ValueError):
    """The CompositionCap data folder or one of its records is unusable."""


# -- the data folder -----------------------------------------------------------------------------------


def data_root() -> Path:
    """The folder ``$COMPOSITIONCAP_ROOT``; a clear error when it is unset or missing."""
    value = os.environ.get(ROOT_ENV)
    if not value:
        raise CompositionCapError(f"{ROOT_ENV} is not set: point it at the folder holding {TEST_FILE} and the images")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise CompositionCapError(f"{ROOT_ENV}={value!r} is not a folder")
    return root


def test_file() -> str:
    """Path of ``compositioncap_test.jsonl`` in the data folder (for the YAML's ``data_files``)."""
    path = data_root() / TEST_FILE
    if not path.is_file():
        raise CompositionCapError(f"{path} does not exist: {ROOT_ENV} must hold {TEST_FILE}")
    return str(path)


def _where(index: int, record: Mapping[str, Any]) -> str:
    return f"record {index} ('id' {record.get('id')!r})"


def check_record(index: int, record: Mapping[str, Any], root: Path) -> None:
    """Raise ``CompositionCapError`` naming record ``index`` and the field when ``record`` is unusable."""

    def fail(field: str, problem: str) -> CompositionCapError:
        return CompositionCapError(f"{_where(index, record)}: field {field!r}: {problem}")

    for field in ("id", "image", "height", "width", "task", "captions"):
        if record.get(field) is None:
            raise fail(field, "missing")
    task = record["task"]
    if task not in TASKS:
        raise fail("task", f"{task!r} is not one of {', '.join(TASKS)}")
    height, width = record["height"], record["width"]
    for field, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise fail(field, f"{value!r} is not a positive integer")
    captions = record["captions"]
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
        raise fail("captions", "must be a non-empty list of non-empty strings")
    if task == "aarc" and not record.get("attribute"):
        raise fail("attribute", "an 'aarc' record needs the attribute its captions describe")
    path = root / record["image"]
    if not path.is_file():
        raise fail("image", f"{path} does not exist")
    try:
        with Image.open(path) as image:
            size = image.size
    except OSError as error:
        raise fail("image", f"{path} is not a readable image ({error})") from None
    if size != (width, height):
        raise fail("image", f"{path} is {size[0]}x{size[1]} (width x height), the record says {width}x{height}")
    if task == "global":
        if record.get("mask") is not None:
            raise fail("mask", "a 'global' record describes the whole image: its mask must be null")
    elif record.get("mask") is None:
        raise fail("mask", f"a {task!r} record needs the region mask")
    else:
        try:
            load_mask(record["mask"], height, width, root=root)
        except MaskError as error:
            raise fail("mask", str(error)) from None


def select_docs(dataset, task: str):
    """lmms-eval ``process_docs``: the records of ``task`` (a ``datasets.Dataset``), all checked."""
    root = data_root()
    seen: dict[Any, int] = {}
    for index, record in enumerate(dataset):
        if record.get("id") in seen:
            raise CompositionCapError(
                f"{_where(index, record)}: field 'id': record {seen[record['id']]} has it too (ids are unique)"
            )
        seen[record.get("id")] = index
        if record.get("task") not in TASKS:  # a misspelt task must not silently shrink a task's set
            raise CompositionCapError(
                f"{_where(index, record)}: field 'task': {record.get('task')!r} is not one of {', '.join(TASKS)}"
            )
        if record["task"] == task:
            check_record(index, record, root)
    selected = dataset.filter(lambda record: record["task"] == task)
    if len(selected) == 0:
        raise CompositionCapError(f"{test_file()} holds no record with task {task!r}")
    logger.info("CompositionCap %s: %d records", task, len(selected))
    return selected


# -- visuals and prompts ----------------------------------------------------------------------------


def visual_prompt_style(kwargs: Mapping[str, Any] | None) -> str:
    """The visual prompt style chosen by the task's ``lmms_eval_specific_kwargs``."""
    style = (kwargs or {}).get("visual_prompt", "bbox")
    if style not in VISUAL_PROMPT_STYLES:
        raise CompositionCapError(f"visual_prompt {style!r} is not one of {', '.join(VISUAL_PROMPT_STYLES)}")
    return style


def doc_mask(doc: Mapping[str, Any]) -> np.ndarray | None:
    """The region of a record, bool [height, width]; None for a whole-image ("global") record."""
    if doc.get("mask") is None:
        return None
    return load_mask(doc["mask"], doc["height"], doc["width"], root=data_root())


def doc_image(doc: Mapping[str, Any]) -> Image.Image:
    """The record's image, RGB."""
    with Image.open(data_root() / doc["image"]) as image:
        return image.convert("RGB")


def doc_to_visual(doc: Mapping[str, Any], kwargs: Mapping[str, Any] | None = None) -> list[Image.Image]:
    """The image shown in the task's visual prompt style (``mask``: RGBA, the mask in the alpha channel)."""
    image, _ = render_visual_prompt(doc_image(doc), doc_mask(doc), visual_prompt_style(kwargs), "")
    return [image]


def doc_to_text(doc: Mapping[str, Any], kwargs: Mapping[str, Any] | None = None) -> str:
    """The task instruction, naming the region the way the visual prompt style shows it."""
    mask = doc_mask(doc)
    if mask is None:
        return task_prompt(doc["task"], doc.get("attribute"))
    region = region_phrase(visual_prompt_style(kwargs), mask_to_box(mask), (doc["width"], doc["height"]))
    return task_prompt(doc["task"], doc.get("attribute"), region=region)


# -- scoring ------------------------------------------------------------------------------------------


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, dict]:
    """One sample for every metric; the scores come from ``aggregate`` over the whole task."""
    sample = {
        "id": doc["id"],
        "task": doc["task"],
        "attribute": doc.get("attribute"),
        "prediction": results[0] if results else "",
        "references": list(doc["captions"]),
    }
    return dict.fromkeys(METRICS, sample)


_SCORES: dict[tuple, dict] = {}


def aggregate(samples: Sequence[Mapping[str, Any]], metric: str, args: Any = None) -> float:
    """``metric`` over all ``samples`` of a task; scores every metric once and writes the extras once.

    A failure here comes after the model has answered everything: it is logged and the metric is NaN,
    so that lmms-eval still saves the results and the samples log (rescore it with ``finecaption score``).
    """
    key = tuple((s["task"], s["id"], s["prediction"]) for s in samples)
    if key not in _SCORES:
        task = samples[0]["task"]
        try:
            _SCORES[key] = _score(samples)
        except Exception:
            logger.exception("scoring CompositionCap %s failed: its metrics are NaN", task)
            _SCORES[key] = {}
        out_dir = _output_dir(args, task)
        if out_dir is not None and _SCORES[key]:
            try:
                write_extras(samples, _SCORES[key], out_dir)
            except Exception:
                logger.exception("could not write the CompositionCap %s breakdown and gallery to %s", task, out_dir)
    return _SCORES[key].get(metric, float("nan"))


def _score(samples: Sequence[Mapping[str, Any]]) -> dict:
    from .metrics import caption_scores

    groups = [s["attribute"] for s in samples] if samples[0]["task"] == "aarc" else None
    return caption_scores(
        [s["prediction"] for s in samples], [s["references"] for s in samples], metrics=METRICS, groups=groups
    )


def _output_dir(args: Any, task: str) -> Path | None:
    """``OUTPUT/<model>/<date>_compositioncap_<task>`` beside lmms-eval's results (None: no output path)."""
    output_path = getattr(args, "output_path", None)
    if not output_path:
        return None
    from lmms_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lmms_eval.utils import sanitize_model_name

    model = sanitize_model_name(GeneralConfigTracker._get_model_name(str(getattr(args, "model_args", "") or "")))
    base = Path(output_path) / model / f"{time.strftime('%Y%m%dT%H%M%S')}_compositioncap_{task}"
    out_dir, suffix = base, 1
    while out_dir.exists():  # two variants of a task in one run must not overwrite each other
        suffix += 1
        out_dir = base.with_name(f"{base.name}_{suffix}")
    return out_dir


def write_extras(samples: Sequence[Mapping[str, Any]], scores: Mapping[str, Any], out_dir: Path) -> None:
    """Write ``breakdown.json`` (overall and per-attribute scores) and the gallery into ``out_dir``."""
    from .gallery import MAX_SAMPLES, write_gallery

    out_dir.mkdir(parents=True)
    task = samples[0]["task"]
    breakdown = {
        "task": task,
        "samples": len(samples),
        "scores": {metric: scores[metric] for metric in METRICS},
        "per_attribute": scores.get("groups", {}),
        "bertscore": scores.get("bertscore"),
    }
    (out_dir / "breakdown.json").write_text(json.dumps(breakdown, indent=2, ensure_ascii=False))
    shown = samples[:MAX_SAMPLES]
    records = _records_by_id({sample["id"] for sample in shown})
    per_sample = scores.get("per_sample", {})
    gallery = [
        {
            "id": sample["id"],
            "image": records[sample["id"]]["image"],
            "mask": records[sample["id"]]["mask"],
            "prediction": sample["prediction"],
            "references": sample["references"],
            "scores": {metric: values[index] for metric, values in per_sample.items()},
            "group": sample["attribute"],
        }
        for index, sample in enumerate(shown)
    ]
    write_gallery(gallery, out_dir, title=f"CompositionCap {task}", root=data_root())
    logger.info("wrote the CompositionCap breakdown and gallery to %s", out_dir)


def _records_by_id(ids: set) -> dict[Any, dict]:
    """The records of the test file whose id is in ``ids``."""
    records = {}
    with open(test_file(), encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                if record.get("id") in ids:
                    records[record["id"]] = record
    return records


# -- a synthetic data folder ------------------------------------------------------------------------

_SHAPES = ("square", "circle")
_COLORS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (50, 90, 220), "yellow": (235, 200, 40)}


def write_demo_folder(root: str | Path, images: int = 4, seed: int = 0) -> Path:
    """Write a small synthetic CompositionCap folder (drawn shapes, template captions) for smoke runs.

    Each image holds a square and a circle: two "aarc" records (color, shape) and one "rdc" record
    per shape, and one "global" record. Returns the path of ``compositioncap_test.jsonl``.
    """
    from PIL import ImageDraw

    from .masks import encode_compositioncap

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for number in range(images):
        width, height = int(rng.integers(96, 192)), int(rng.integers(96, 192))
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(150, 256, 3)))
        names = rng.choice(list(_COLORS), size=2, replace=False)
        described = []
        for index, (shape, color) in enumerate(zip(_SHAPES, names, strict=True)):
            side = min(width, height) // 3
            x0 = (width // 2) * index + int(rng.integers(0, width // 2 - side))
            y0 = int(rng.integers(0, height - side))
            box = (x0, y0, x0 + side, y0 + side)
            region = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(region)
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=1)
            image.paste(_COLORS[color], mask=region.point(lambda v: 255 * v))
            mask = encode_compositioncap(np.asarray(region) > 0)
            side_name = "left" if index == 0 else "right"
            entity = f"img{number}_{shape}"
            base = {"image": f"images/{number}.png", "height": height, "width": width, "mask": mask}
            for attribute, caption in (
                ("color", f"The {shape} is {color}."),
                ("shape", f"It is a {shape} with {'straight' if shape == 'square' else 'round'} edges."),
            ):
                records.append(
                    {"id": f"{entity}_{attribute}", **base, "task": "aarc", "attribute": attribute,
                     "captions": [caption]}
                )  # fmt: skip
            records.append(
                {"id": f"{entity}_dense", **base, "task": "rdc", "attribute": None,
                 "captions": [f"A {color} {shape} on the {side_name} side of the picture, drawn flat."]}
            )  # fmt: skip
            described.append(f"a {color} {shape} on the {side_name}")
        image.save(root / "images" / f"{number}.png")
        records.append(
            {"id": f"img{number}_global", "image": f"images/{number}.png", "height": height, "width": width,
             "mask": None, "task": "global", "attribute": None,
             "captions": [f"A plain picture with {described[0]} and {described[1]}."]}
        )  # fmt: skip
    path = root / TEST_FILE
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# -- the per-image nested form ------------------------------------------------------------------------


def flatten_image(index: int, image: Mapping[str, Any]) -> list[dict]:
    """The flat records of one per-image record of the nested form::

        {"id"?: str, "image", "height", "width", "global_captions"?: [str],
         "entities": [{"id", "mask", "dense_captions"?: [str], "attributes"?: {name: str | [str]}}]}

    giving one "global" record, one "rdc" record per entity with dense captions and one "aarc"
    record per entity attribute; ids are ``<image id>_<entity id>_<attribute>`` (``_dense``, ``_global``).
    """
    for field in ("image", "height", "width"):
        if image.get(field) is None:
            raise CompositionCapError(f"image record {index}: field {field!r}: missing")
    image_id = image.get("id", Path(image["image"]).stem)
    base = {"image": image["image"], "height": image["height"], "width": image["width"]}
    records = []
    for position, entity in enumerate(image.get("entities") or []):
        if entity.get("id") is None or entity.get("mask") is None:
            raise CompositionCapError(
                f"image record {index} ('id' {image_id!r}): field 'entities[{position}]': needs 'id' and 'mask'"
            )
        region = {**base, "mask": entity["mask"]}
        prefix = f"{image_id}_{entity['id']}"
        if entity.get("dense_captions"):
            records.append(
                {"id": f"{prefix}_dense", **region, "task": "rdc", "attribute": None,
                 "captions": list(entity["dense_captions"])}
            )  # fmt: skip
        for attribute, captions in (entity.get("attributes") or {}).items():
            records.append(
                {"id": f"{prefix}_{attribute}", **region, "task": "aarc", "attribute": attribute,
                 "captions": [captions] if isinstance(captions, str) else list(captions)}
            )  # fmt: skip
    if image.get("global_captions"):
        records.append(
            {"id": f"{image_id}_global", **base, "mask": None, "task": "global", "attribute": None,
             "captions": list(image["global_captions"])}
        )  # fmt: skip
    return records


def convert_nested(source: str | Path, target: str | Path) -> int:
    """Flatten a nested file (a JSON list or JSON lines of per-image records) into ``target`` (JSONL)."""
    text = Path(source).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        images = json.loads(text)
    else:
        images = [json.loads(line) for line in text.splitlines() if line.strip()]
    records = [record for index, image in enumerate(images) for record in flatten_image(index, image)]
    Path(target).write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    logger.info("wrote %d records of %d images to %s", len(records), len(images), target)
    return len(records)


def _run_demo(args: argparse.Namespace) -> int:
    print(write_demo_folder(args.directory, images=args.images, seed=args.seed))
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    print(f"{convert_nested(args.source, args.target)} records written to {args.target}")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("compositioncap-demo", help="write a small synthetic CompositionCap folder")
    demo.add_argument("directory", help="output folder (use it as COMPOSITIONCAP_ROOT)")
    demo.add_argument("--images", type=int, default=4, help="number of images (7 records each)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_run_demo)
    convert = subparsers.add_parser(
        "compositioncap-convert", help="flatten per-image nested CompositionCap records to the task's JSONL"
    )
    convert.add_argument("source", help="nested file: a JSON list or JSON lines of per-image records")
    convert.add_argument("target", help=f"flat JSON lines (name it {TEST_FILE} in the data folder)")
    convert.set_defaults(func=_run_convert)
