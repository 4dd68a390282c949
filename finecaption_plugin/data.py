"""Training data: LLaVA conversation files with optional masks, and CompositionCap JSONL.

Accepted files (``--data_path``), ``.json`` (a list) or ``.jsonl`` (one record a line):

- LLaVA records ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}...]}`` with an
  optional ``"mask"``: a CompositionCap base64-gzip string (with the record's ``"height"`` and
  ``"width"``), a COCO RLE dict, a polygon list, a ``{"bbox": [...]}`` box, or a mask image path
  relative to ``--image_folder``;
- CompositionCap records ``{"id", "image", "height", "width", "mask", "task", "attribute", "captions"}``
  (the evaluation JSONL): one training sample per caption, asked with the task's prompt
  (`finecaption_plugin.prompts.task_prompt`).

A LLaVA record with a mask may name how the region is shown, ``"visual_prompt"``: ``"mask"`` (the default)
feeds the mask to the model; any other style of ``visual_prompts.VISUAL_PROMPT_STYLES`` ("bbox",
"contour", ...) is drawn on the image at load time (``visual_prompts.render_visual_prompt``) and the
model gets no mask (the whole image), as the lmms-eval CompositionCap tasks show a region in that style.
The prompt should name the region with the style's phrase (``visual_prompts.REGION_PHRASES``).

Records are checked when the file is read, before the model loads: structure, conversation (valid Unicode
text), ``height``/``width``, every image decoded in full (its header checked against the pixel limit first,
``masks.max_pixels``) and every mask decoded at its image's size; a bad one stops the run before training
starts. Image and mask paths stay inside the data folder (``--image_folder``, else the current folder) once
``..`` and symlinks are resolved, unless ``--allow_outside_data_folder True``. Every error names the record
and the field. Samples are turned into tensors lazily.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from . import records
from .conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    ConversationError,
    ConversationTemplate,
    normalize_turns,
    tokenize_segments,
    unicode_problem,
)
from .masks import MaskError, inside_folder, is_mask_path, load_mask
from .prompts import task_prompt
from .visual_prompts import VISUAL_PROMPT_STYLES, render_visual_prompt

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A training record that cannot be read, named by its position and id."""


def record_name(index: int, record: Any) -> str:
    record_id = record.get("id") if isinstance(record, dict) else None
    return f"record {index} ('id' {record_id})"


def read_records(path: str | Path) -> list[dict]:
    """The records of a ``.json`` list or a ``.jsonl`` file (one object a line), read by ``records.read_records``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data_path {path} does not exist")
    try:
        return [record for _, record in records.read_records(path)]
    except records.CompositionCapError as err:
        raise DataError(f"{path}: {err}") from None


@dataclass(frozen=True)
class Sample:
    """One training conversation: ``turns`` [(role, text)] plus its image and mask (both optional)."""

    name: str
    turns: list
    image: str | None = None
    mask: Any = None
    height: int | None = None
    width: int | None = None
    visual_prompt: str = "mask"


def _visual_prompt(name: str, record: dict) -> str:
    """The record's ``visual_prompt`` (default "mask"), checked."""
    style = record.get("visual_prompt", "mask")
    if style not in VISUAL_PROMPT_STYLES:
        raise DataError(f"{name}: field 'visual_prompt': {style!r} is not one of {', '.join(VISUAL_PROMPT_STYLES)}")
    if style != "mask" and record.get("mask") is None:
        raise DataError(f"{name}: field 'visual_prompt': {style!r} shows a region, but the record has no 'mask'")
    if style != "mask" and "conversations" not in record:
        raise DataError(f"{name}: field 'visual_prompt': {style!r} is for LLaVA records, whose prompt names the region")
    return style


def _compositioncap_samples(index: int, record: dict, template: ConversationTemplate) -> list[Sample]:
    name = record_name(index, record)
    captions = record.get("captions")
    if not records.are_captions(captions):
        raise DataError(f"{name}: field 'captions': expected a non-empty list of non-empty strings")
    try:
        prompt = task_prompt(record.get("task"), record.get("attribute"))
    except ValueError as err:
        raise DataError(f"{name}: field 'task': {err}") from None
    for caption_index, caption in enumerate(captions):
        problem = unicode_problem(caption)
        if problem:
            raise DataError(f"{name}: field 'captions': caption {caption_index} is {problem}")
    samples = []
    for caption_index, caption in enumerate(captions):
        conversation = [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"},
            {"from": "gpt", "value": caption},
        ]
        turns = normalize_turns(conversation, template, has_image=True)
        samples.append(
            Sample(
                f"{name} caption {caption_index}",
                turns,
                record.get("image"),
                record.get("mask"),
                record.get("height"),
                record.get("width"),
            )
        )
    return samples


def build_samples(
    records: Sequence[dict],
    template: ConversationTemplate,
    image_folder: str | Path | None,
    allow_outside: bool = False,
    check_files: bool = True,
    progress: bool = False,
) -> list[Sample]:
    """Check every record and turn it into samples (CompositionCap records give one per caption).

    ``check_files``: decode every image and mask now (the sizes from headers first), so a broken one is named
    before the model loads. ``allow_outside``: image and mask paths may leave the data folder. ``progress``: a
    progress bar over the records (decoding ~100k masks takes about a minute on 2 CPUs).
    """
    from tqdm.auto import tqdm

    samples = []
    root = Path(image_folder) if image_folder else None
    image_sizes: dict[Path, tuple[int, int]] = {}
    checked = tqdm(records, desc="checking the training data", unit="record", disable=not progress)
    for index, record in enumerate(checked):
        name = record_name(index, record)
        image = record.get("image")
        if image is not None and not isinstance(image, str):
            raise DataError(f"{name}: field 'image': expected a path string, got {type(image).__name__}")
        if image is not None:
            _data_file(name, "image", image, root, allow_outside)
        mask = record.get("mask")
        if mask is not None and image is None:
            raise DataError(f"{name}: field 'mask': a mask needs an 'image'")
        if isinstance(mask, str) and is_mask_path(mask):
            _data_file(name, "mask", mask, root, allow_outside)
        for field in ("height", "width"):
            value = record.get(field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise DataError(
                    f"{name}: field {field!r}: {value!r} is a {type(value).__name__}, expected a positive integer"
                )
        style = _visual_prompt(name, record)
        try:
            if "conversations" in record:
                if not isinstance(record["conversations"], list):
                    raise ConversationError("expected a list of turns")
                turns = normalize_turns(record["conversations"], template, has_image=image is not None)
                samples.append(Sample(name, turns, image, mask, record.get("height"), record.get("width"), style))
            elif "captions" in record:
                if image is None:
                    raise DataError(f"{name}: field 'image': a CompositionCap record needs an image")
                samples.extend(_compositioncap_samples(index, record, template))
            else:
                raise DataError(f"{name}: needs 'conversations' (LLaVA) or 'captions' (CompositionCap)")
        except ConversationError as err:
            field = "captions" if "conversations" not in record else "conversations"
            raise DataError(f"{name}: field {field!r}: {err}") from None
        if check_files and image is not None:
            _check_files(name, record, root, allow_outside, image_sizes)
    if not samples:
        raise DataError("the training data holds no record")
    return samples


def _resolve(path: str, root: Path | None) -> Path:
    return root / path if root is not None and not Path(path).is_absolute() else Path(path)


def _data_file(name: str, field: str, value: str, root: Path | None, allow_outside: bool) -> Path:
    """The file a record's ``field`` names: present, and inside the data folder unless ``allow_outside``."""
    path = _resolve(value, root)
    if not allow_outside:
        try:
            inside_folder(value, root if root is not None else Path.cwd(), field)
        except MaskError as err:
            raise DataError(
                f"{name}: field {field!r}: {err}; pass --allow_outside_data_folder True to allow it"
            ) from None
    if not path.is_file():
        raise DataError(f"{name}: field {field!r}: file not found: {path}")
    return path


def _check_files(
    name: str, record: dict, root: Path | None, allow_outside: bool, image_sizes: dict[Path, tuple[int, int]]
) -> None:
    """Decode the record's image (once per file) and mask now; errors name the record and the field."""
    path = _resolve(record["image"], root)
    if path not in image_sizes:
        try:
            image_sizes[path] = records.image_size(path)
        except (OSError, ValueError) as err:
            raise DataError(f"{name}: field 'image': cannot read {record['image']}: {err}") from None
    width, height = image_sizes[path]
    _check_stated_size(name, record.get("height"), record.get("width"), height, width)
    if record.get("mask") is not None:
        try:
            load_mask(record["mask"], height, width, root=root, contain=not allow_outside and root is not None)
        except MaskError as err:
            raise DataError(f"{name}: field 'mask': {err}") from None


def _check_stated_size(name: str, height: Any, width: Any, image_height: int, image_width: int) -> None:
    if (height, width) != (None, None) and (height, width) != (image_height, image_width):
        raise DataError(
            f"{name}: fields 'height'/'width' say {height}x{width} (height x width), the image is "
            f"{image_height}x{image_width}"
        )


class SupervisedDataset(Dataset):
    """Samples -> ``input_ids``, ``labels`` (assistant tokens only), ``pixel_values`` `[3, S, S]` and
    ``mask_values`` `[1, S, S]` (absent for text-only samples)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        processor,
        template: ConversationTemplate,
        image_folder: str | Path | None,
        model_max_length: int,
    ):
        template.check_tokenizer(processor.tokenizer)
        self.samples = list(samples)
        self.processor = processor
        self.template = template
        self.root = Path(image_folder) if image_folder else None
        self.model_max_length = model_max_length

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def modality_lengths(self) -> list[int]:
        """LLaVA's length estimate per sample: words plus image tokens, negative for text-only samples."""
        lengths = []
        for sample in self.samples:
            words = sum(len(text.split()) for _, text in sample.turns)
            lengths.append(words + self.processor.num_image_tokens if sample.image else -words)
        return lengths

    def load_image(self, sample: Sample) -> tuple[Image.Image, np.ndarray | None]:
        try:
            image = records.open_image(_resolve(sample.image, self.root))
        except (OSError, ValueError) as err:
            raise DataError(f"{sample.name}: field 'image': cannot read {sample.image}: {err}") from None
        if sample.mask is None:
            return image, None
        _check_stated_size(sample.name, sample.height, sample.width, image.height, image.width)
        try:
            mask = load_mask(sample.mask, image.height, image.width, root=self.root)
        except MaskError as err:
            raise DataError(f"{sample.name}: field 'mask': {err}") from None
        if sample.visual_prompt != "mask":  # drawn on the image; the model sees the whole image
            image, _ = render_visual_prompt(image, mask, sample.visual_prompt, "")
            return image.convert("RGB"), None
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        tokenizer = self.processor.tokenizer
        try:
            segments = self.template.segments(sample.turns, tokenizer)
            input_ids, labels = _expand_image_tokens(
                *tokenize_segments(segments, tokenizer),
                self.processor.image_token_id,
                self.processor.num_image_tokens,
            )
        except ConversationError as err:
            raise DataError(f"{sample.name}: field 'conversations': {err}") from None
        if len(input_ids) > self.model_max_length:
            input_ids, labels = input_ids[: self.model_max_length], labels[: self.model_max_length]
            if all(label == IGNORE_INDEX for label in labels) or (
                sample.image
                and input_ids.count(self.processor.image_token_id) != self.processor.num_image_tokens
            ):
                raise DataError(
                    f"{sample.name}: longer than --model_max_length {self.model_max_length} tokens, and "
                    "cutting it would drop the image or every answer token"
                )
        item = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
        if sample.image:
            image, mask = self.load_image(sample)
            features = self.processor.image_processor(image, masks=mask, return_tensors="pt")
            item["pixel_values"] = features["pixel_values"][0]
            item["mask_values"] = features["mask_values"][0]
        return item


def _expand_image_tokens(
    input_ids: list[int], labels: list[int], image_token_id: int, count: int
) -> tuple[list[int], list[int]]:
    """Repeat each image token ``count`` times (the processor's expansion), never trained."""
    out_ids, out_labels = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if token == image_token_id:
            out_ids.extend([token] * count)
            out_labels.extend([IGNORE_INDEX] * count)
        else:
            out_ids.append(token)
            out_labels.append(label)
    return out_ids, out_labels


@dataclass
class DataCollator:
    """Right-pads a list of dataset items into a batch; images are stacked only for samples that have one."""

    pad_token_id: int

    def __call__(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            length = len(item["input_ids"])
            input_ids[row, :length] = item["input_ids"]
            labels[row, :length] = item["labels"]
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        with_image = [item for item in items if "pixel_values" in item]
        if with_image:
            batch["pixel_values"] = torch.stack([item["pixel_values"] for item in with_image])
            batch["mask_values"] = torch.stack([item["mask_values"] for item in with_image])
        return batch


class ModalityLengthGroupedSampler(Sampler[int]):
    """LLaVA's ``group_by_modality_length``: batches hold only image samples or only text-only samples, of
    similar length; batch order is shuffled. Leftovers of both modalities form the last batch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        batches, leftovers = [], []
        for modality in (True, False):
            indices = [i for i, length in enumerate(self.lengths) if (length > 0) == modality]
            rng.shuffle(indices)
            # Sort by length inside megabatches of 50 batches: lengths group without a fixed order.
            megabatch = 50 * self.batch_size
            for start in range(0, len(indices), megabatch):
                chunk = sorted(indices[start : start + megabatch], key=lambda i: -abs(self.lengths[i]))
                whole = len(chunk) // self.batch_size * self.batch_size
                batches.extend(chunk[i : i + self.batch_size] for i in range(0, whole, self.batch_size))
                leftovers.extend(chunk[whole:])
        rng.shuffle(batches)
        for batch in batches:
            yield from batch
        yield from leftovers
