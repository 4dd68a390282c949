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
(``index.html``, ``gallery.png``) go to ``OUTPUT/<model>/<date>_<lmms-eval task name>/``.

Commands: ``finecaption compositioncap-demo DIR`` writes a small synthetic folder for smoke runs;
``finecaption compositioncap-convert IN OUT`` flattens the per-image nested form (``flatten_image``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

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


def check_record(
    index: int, record: Mapping[str, Any], root: Path, image_sizes: dict[Path, tuple[int, int]] | None = None
) -> None:
    """Raise ``CompositionCapError`` naming record ``index`` and the field when ``record`` is unusable.

    ``record["task"]`` must be one of ``TASKS`` (``select_docs`` checks it for every record first).
    ``image_sizes`` remembers the images already decoded, which records of one image share.
    """

    def fail(field: str, problem: str) -> CompositionCapError:
        return CompositionCapError(f"{_where(index, record)}: field {field!r}: {problem}")

    for field in ("id", "image", "height", "width", "task", "captions"):
        if record.get(field) is None:
            raise fail(field, "missing")
    task = record["task"]
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
    image_sizes = {} if image_sizes is None else image_sizes
    if path not in image_sizes:
        try:
            image_sizes[path] = _decoded_size(path)
        except (OSError, SyntaxError, ValueError) as error:
            raise fail("image", f"{path} is not a readable image ({error})") from None
    size = image_sizes[path]
    if size != (width, height):
        raise fail("image", f"{path} is {size[0]}x{size[1]} (width x height), the record says {width}x{height}")
    if task == "global":
        if record.get("mask") is not None:
            raise fail("mask", "a 'global' record describes the whole image: its mask must be null")
    elif record.get("mask") is None:
        raise fail("mask", f"a {task!r} record needs the region mask")
    else:
        try:
            _load_mask(record["mask"], height, width, root)
        except MaskError as error:
            raise fail("mask", str(error)) from None


@contextmanager
def _strict_image_loading() -> Iterator[None]:
    # lmms-eval sets LOAD_TRUNCATED_IMAGES process-wide, which would grey-fill a cut-off file silently.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _decoded_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image at ``path``, decoded in full: a truncated or corrupt file raises."""
    with _strict_image_loading(), Image.open(path) as image:
        image.load()
        return image.size


def _load_mask(value: Any, height: int, width: int, root: Path) -> np.ndarray:
    """A record's mask, bool [height, width]; the string forms are cached (read-only arrays), since the
    check, the prompt and the visual of a record, and the records of one region, decode the same mask."""
    if isinstance(value, str):
        return _cached_mask(value, height, width, root)
    return load_mask(value, height, width, root=root)


@functools.lru_cache(maxsize=32)  # 32 masks of 1024x1024: 32 MB
def _cached_mask(value: str, height: int, width: int, root: Path) -> np.ndarray:
    mask = load_mask(value, height, width, root=root)
    mask.flags.writeable = False
    return mask


def variant_docs(variant: str) -> Callable[[Any], Any]:
    """lmms-eval ``process_docs`` of the task named ``variant``: ``compositioncap_<task>[_<suffix>]``."""
    parts = variant.split("_")
    if len(parts) < 2 or parts[0] != "compositioncap" or parts[1] not in TASKS:
        raise CompositionCapError(f"{variant!r} is not a CompositionCap task name (compositioncap_<task>[_<suffix>])")
    return functools.partial(select_docs, task=parts[1], variant=variant)


def select_docs(dataset, task: str, variant: str | None = None):
    """lmms-eval ``process_docs``: the records of ``task`` (a ``datasets.Dataset``), all checked.

    Each record gains the field ``variant`` (the lmms-eval task name; ``compositioncap_<task>`` by
    default), which names its scores; the references are kept here for scoring (see ``aggregate``).
    """
    variant = variant or f"compositioncap_{task}"
    root = data_root()
    seen: dict[Any, int] = {}
    image_sizes: dict[Path, tuple[int, int]] = {}
    references: dict[Any, dict] = {}
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
            check_record(index, record, root, image_sizes)
            references[record["id"]] = {
                "task": task,
                "attribute": record.get("attribute"),
                "references": list(record["captions"]),
            }
    if not references:
        raise CompositionCapError(f"{test_file()} holds no record with task {task!r}")
    _REFERENCES[variant] = references
    selected = dataset.filter(lambda record: record["task"] == task)
    logger.info("CompositionCap %s: %d records", variant, len(selected))
    return selected.add_column("variant", [variant] * len(selected))


# -- visuals and prompts ----------------------------------------------------------------------------


def visual_prompt_style(kwargs: Mapping[str, Any] | None) -> str:
    """The visual prompt style chosen by the task's ``lmms_eval_specific_kwargs``."""
    style = (kwargs or {}).get("visual_prompt", "bbox")
    if style not in VISUAL_PROMPT_STYLES:
        raise CompositionCapError(f"visual_prompt {style!r} is not one of {', '.join(VISUAL_PROMPT_STYLES)}")
    return style


def doc_mask(doc: Mapping[str, Any]) -> np.ndarray | None:
    """The region of a record, bool [height, width] (read-only); None for a whole-image ("global") record."""
    if doc.get("mask") is None:
        return None
    return _load_mask(doc["mask"], doc["height"], doc["width"], data_root())


def doc_image(doc: Mapping[str, Any]) -> Image.Image:
    """The record's image, RGB."""
    with Image.open(data_root() / doc["image"]) as image:
        return image.convert("RGB")


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
    """The style of ``kwargs``, remembered for the doc's variant: lmms-eval resolves a task's
    ``lmms_eval_specific_kwargs`` per model and shows them only to these two hooks, not to scoring."""
    style = visual_prompt_style(kwargs)
    _STYLES[doc.get("variant")] = style
    return style


# -- scoring ------------------------------------------------------------------------------------------

# Per variant (lmms-eval task name): the style its hooks were given, and its records' references,
# kept at ``process_docs`` by every process, so that the samples lmms-eval gathers stay small.
_STYLES: dict[str | None, str] = {}
_REFERENCES: dict[str, dict[Any, dict]] = {}
_SCORES: dict[tuple, dict] = {}


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, dict]:
    """The same small sample for every metric (lmms-eval logs each metric's value: the references
    would be stored five times); the scores come from ``aggregate`` over the whole task."""
    sample = {
        "variant": doc["variant"],
        "style": _STYLES.get(doc["variant"]) if doc.get("mask") is not None else None,  # None: no region
        "id": doc["id"],
        "attribute": doc.get("attribute"),  # `finecaption score LOG --group-field attribute` reads it here
        "prediction": results[0] if results else "",
    }
    return dict.fromkeys(METRICS, sample)


def aggregate(samples: Sequence[Mapping[str, Any]], metric: str, args: Any = None) -> float:
    """``metric`` over all ``samples`` of a task variant; scores every metric once, writes the extras once.

    A failure here comes after the model has answered everything: it is logged and the metric is NaN,
    so that lmms-eval still saves the results and the samples log (rescore it with ``finecaption score``).
    """
    variant, style = samples[0]["variant"], samples[0]["style"]
    key = (variant, style, tuple((s["id"], s["prediction"]) for s in samples))
    if key not in _SCORES:
        try:
            samples = _with_references(samples)
            _SCORES[key] = _score(samples)
        except Exception:
            logger.exception("scoring CompositionCap %s failed: its metrics are NaN", variant)
            _SCORES[key] = {}
        out_dir = _output_dir(args, variant)
        if out_dir is not None and _SCORES[key]:
            try:
                write_extras(samples, _SCORES[key], out_dir)
            except Exception:
                logger.exception("could not write the CompositionCap %s breakdown and gallery to %s", variant, out_dir)
    return _SCORES[key].get(metric, float("nan"))


def _with_references(samples: Sequence[Mapping[str, Any]]) -> list[dict]:
    """``samples`` with the task, attribute and references of their records."""
    variant = samples[0]["variant"]
    if variant not in _REFERENCES:
        raise CompositionCapError(f"the records of {variant} were not loaded in this process (process_docs)")
    records = _REFERENCES[variant]
    return [{**records[sample["id"]], **sample} for sample in samples]


def _score(samples: Sequence[Mapping[str, Any]]) -> dict:
    from .metrics import caption_scores

    groups = [s["attribute"] for s in samples] if samples[0]["task"] == "aarc" else None
    return caption_scores(
        [s["prediction"] for s in samples], [s["references"] for s in samples], metrics=METRICS, groups=groups
    )


def _output_dir(args: Any, variant: str) -> Path | None:
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


def write_extras(samples: Sequence[Mapping[str, Any]], scores: Mapping[str, Any], out_dir: Path) -> None:
    """Write ``breakdown.json`` (overall and per-attribute scores) and the gallery into ``out_dir``.

    ``samples`` carry ``variant``, ``style``, ``task``, ``id``, ``attribute``, ``prediction`` and ``references``.
    """
    from .gallery import MAX_SAMPLES, write_gallery

    out_dir.mkdir(parents=True)
    variant, style = samples[0]["variant"], samples[0]["style"]
    breakdown = {
        "variant": variant,
        "task": samples[0]["task"],
        "style": style,
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
    title = f"CompositionCap {variant}" + (f" (region shown as {style})" if style else "")
    write_gallery(gallery, out_dir, title=title, root=data_root())
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
