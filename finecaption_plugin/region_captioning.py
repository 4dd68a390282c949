"""Caption many regions of an image, many questions each, encoding each image once and prefilling each region once.

Regional captioning asks many questions of one image (CompositionCap: ~7 masks per image, ~2.7 questions per
mask), and the plain path runs the whole model for each question. Here the work is shared at three levels:

1. **image**: the slow path (ConvNeXt, and SAM if used) reads the pixels only, so it runs once per image and its
   map is reused for every mask of the image. With `slow_mask_embedding` the slow path reads the mask too, and
   nothing is shared at this level.
2. **region** (image, mask, and the prompt text up to the image): the fast path, MR-Adapters, fusion and projector
   run once, and so does the prefill of the longest token prefix that all of the region's prompts have in common
   (system prompt, user header, the image tokens, any shared words). Its KV cache (a `DynamicCache`) is then
   copied once per question (`batch_select_indices`).
3. **question**: what is left of each prompt (its *suffix*) is right-aligned after the prefix, the gap between
   them masked out in `attention_mask`; `generate` continues from the cache and decodes all questions of a batch
   together. `generate` computes position ids from `attention_mask` (cumulative sum), so every token gets the
   position it has on the plain path, where the padding is on the left instead.

Greedy outputs equal the plain path's (the tests compare tokens and first-step logits). `RegionCaptioner(...,
share=False)` runs the plain path (one `processor` + `generate` call per batch) for comparison.

Limits: one image per prompt (other requests go through the plain path); `use_cache=False` and
`num_return_sequences > 1` fall back to the plain path; a region's questions are decoded in one batch even when
their answers differ a lot in length (finished rows are padded until the longest is done, as on the plain path).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache

from .masks import MaskError, load_mask

logger = logging.getLogger(__name__)


@dataclass
class RegionRequest:
    """One question about one region.

    Args:
        text: the whole prompt (chat template applied) with exactly one `<image>` placeholder.
        image: the image.
        mask: the region, in any form `finecaption_plugin.masks.load_mask` reads (a bool `[H, W]` array, ...);
            None: the whole image.
    """

    text: str
    image: Image.Image
    mask: Any = None


@dataclass
class RegionWork:
    """What a call encoded, against what the plain path encodes for the same requests (one of each per request)."""

    requests: int = 0
    images: int = 0  # slow-path runs (one per image, or one per region with `slow_mask_embedding`)
    regions: int = 0  # fast-path runs (vision tower after the slow path, projector)
    prefixes: int = 0  # prefills of a prompt prefix (on the plain path, each whole prompt)
    prefix_tokens: int = 0
    suffix_tokens: int = 0  # tokens prefilled after a cached prefix
    plain_tokens: int = 0  # prompt tokens the plain path prefills

    def __add__(self, other: RegionWork) -> RegionWork:
        return RegionWork(*(a + b for a, b in zip(vars(self).values(), vars(other).values(), strict=True)))

    def __str__(self) -> str:
        prefilled = self.prefix_tokens + self.suffix_tokens
        return (
            f"{self.requests} requests: {self.images} slow-path images, {self.regions} regions, {self.prefixes} "
            f"prefixes encoded ({self.prefix_tokens} prefix + {self.suffix_tokens} suffix tokens prefilled, "
            f"{prefilled / max(self.plain_tokens, 1):.0%} of the plain path's {self.plain_tokens})"
        )


@dataclass
class RegionGeneration:
    """New tokens per request (cut after the first end-of-sequence token), in request order, and, when asked for,
    the first step's logits `[requests, vocab]` (float32, before any logits processor)."""

    tokens: list[list[int]]
    first_logits: torch.Tensor | None = None
    work: RegionWork = field(default_factory=RegionWork)


@dataclass
class _Group:
    """Requests that share image, mask and prompt prefix: one prefill, one cache row copied per request."""

    image_key: str
    region_key: tuple[str, str]
    indices: list[int]
    prefix: list[int] = field(default_factory=list)


class RegionCaptioner:
    r"""
    Captions regions with the work shared between the masks of an image and the questions of a mask.

    ```python
    captioner = RegionCaptioner(model, processor)
    captions = captioner.caption(image, [mask_a, mask_b], [["What color is it?", "What shape?"], "Describe it."])
    # [["...", "..."], "..."]
    ```

    Args:
        model: a `FineCaptionForConditionalGeneration` (any dtype, 4-bit, `device_map="auto"`).
        processor: its `FineCaptionProcessor`.
        share: False runs the plain path, one `processor` + `generate` call per batch (the reference).
        batch_size: most requests decoded together (None: all of a call); a region with more questions is split.
        system_prompt: system message of the prompts `caption` builds (None: the chat template's default).
    """

    def __init__(
        self, model, processor, share: bool = True, batch_size: int | None = None, system_prompt: str | None = None
    ):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive or None, got {batch_size}")
        self.model = model
        self.processor = processor
        self.share = share
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.last_work = RegionWork()

    # -- public API --------------------------------------------------------------------------------------

    def prompt(self, question: str) -> str:
        """The chat-template prompt asking `question` about the image."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def caption(self, image, masks: Sequence[Any], prompts, **generate_kwargs) -> list:
        """Captions of the regions of one image, or of several images.

        Args:
            image: a PIL image, or a list of them; then `masks` and `prompts` hold one entry per image.
            masks: the image's masks (bool `[H, W]` arrays or any `load_mask` form; None: the whole image).
            prompts: a question asked of every mask (str), or one entry per mask: a question or a list of them.
            generate_kwargs: for `generate` (`max_new_tokens=...`, ...).

        Returns:
            One entry per mask: a caption (for a question) or a list of captions (for a list of questions); for a
            list of images, a list of those.
        """
        if isinstance(image, Image.Image):
            return self.caption([image], [masks], [prompts], **generate_kwargs)[0]
        images = list(image)
        if len(masks) != len(images) or len(prompts) != len(images):
            raise ValueError(
                f"{len(images)} images need one list of masks and one prompt entry each: got {len(masks)} "
                f"and {len(prompts)}"
            )
        requests, layout = [], []
        for picture, picture_masks, picture_prompts in zip(images, masks, prompts, strict=True):
            picture_masks = list(picture_masks)
            if isinstance(picture_prompts, str):
                picture_prompts = [picture_prompts] * len(picture_masks)
            if len(picture_prompts) != len(picture_masks):
                raise ValueError(f"{len(picture_masks)} masks but {len(picture_prompts)} prompt entries")
            picture_layout = []
            for mask, questions in zip(picture_masks, picture_prompts, strict=True):
                single = isinstance(questions, str)
                questions = [questions] if single else list(questions)
                picture_layout.append((single, len(questions)))
                requests.extend(RegionRequest(self.prompt(question), picture, mask) for question in questions)
            layout.append(picture_layout)
        answers = iter(self.answer(requests, **generate_kwargs))
        return [
            [next(answers) if single else [next(answers) for _ in range(count)] for single, count in picture_layout]
            for picture_layout in layout
        ]

    def answer(self, requests: Sequence[RegionRequest], **generate_kwargs) -> list[str]:
        """Decoded answers (special tokens skipped, stripped), in request order."""
        tokens = self.generate(requests, **generate_kwargs).tokens
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]

    @torch.inference_mode()
    def generate(
        self, requests: Sequence[RegionRequest], output_first_logits: bool = False, **generate_kwargs
    ) -> RegionGeneration:
        """New tokens of each request, shared (or plain with `share=False`); see `RegionGeneration`."""
        requests = list(requests)
        if not requests:
            return RegionGeneration([], None)
        if output_first_logits:
            generate_kwargs.update(output_logits=True, return_dict_in_generate=True)
        share = self.share and self._can_share(generate_kwargs)
        run = self._generate_shared if share else self._generate_plain
        tokens, logits, work = [None] * len(requests), [None] * len(requests), RegionWork()
        chunks = self._chunks(requests) if share else self._plain_chunks(len(requests))
        for chunk in chunks:
            chunk_tokens, chunk_logits, chunk_work = run([requests[i] for i in chunk], generate_kwargs)
            work += chunk_work
            for row, index in enumerate(chunk):
                tokens[index] = chunk_tokens[row]
                if chunk_logits is not None:
                    logits[index] = chunk_logits[row]
        self.last_work = work
        logger.info("region captioning (%s path): %s", "shared" if share else "plain", work)
        return RegionGeneration(tokens, torch.stack(logits) if output_first_logits else None, work)

    # -- grouping ------------------------------------------------------------------------------------------

    def _can_share(self, generate_kwargs: dict) -> bool:
        config = self.model.generation_config
        use_cache = generate_kwargs.get("use_cache", config.use_cache)
        sequences = generate_kwargs.get("num_return_sequences", config.num_return_sequences) or 1
        if not use_cache or sequences > 1:
            logger.info("use_cache=False or num_return_sequences > 1: region captioning takes the plain path")
            return False
        return True

    def _plain_chunks(self, count: int) -> list[list[int]]:
        size = self.batch_size or count
        return [list(range(start, min(start + size, count))) for start in range(0, count, size)]

    def _chunks(self, requests: list[RegionRequest]) -> list[list[int]]:
        """Request indices per batch: whole images where `batch_size` allows, images in order of appearance."""
        image_keys: dict[int, str] = {}
        by_image: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = image_keys.get(id(request.image))
            if key is None:
                key = image_keys[id(request.image)] = image_content_key(request.image)
            by_image.setdefault(key, []).append(index)
        chunks: list[list[int]] = []
        limit = self.batch_size or len(requests)
        for indices in by_image.values():
            if chunks and len(chunks[-1]) + len(indices) <= limit:
                chunks[-1].extend(indices)
                continue
            chunks.extend(indices[start : start + limit] for start in range(0, len(indices), limit))
        return chunks

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each prompt as the processor gives them (expanded `<image>`, no padding)."""
        processor = self.processor
        placeholder = processor.image_token
        for text in texts:
            if text.count(placeholder) != 1:
                raise ValueError(f"region captioning needs exactly one {placeholder} per prompt, got {text!r}")
        expanded = [text.replace(placeholder, placeholder * processor.num_image_tokens) for text in texts]
        return processor.tokenizer(expanded)["input_ids"]

    # -- the two paths -------------------------------------------------------------------------------------

    def _generate_plain(self, requests: list[RegionRequest], generate_kwargs: dict):
        inputs = self.processor(
            text=[request.text for request in requests],
            images=[request.image for request in requests],
            masks=[request.mask for request in requests],
            return_tensors="pt",
            padding=True,
        ).to(self.model.device, dtype=self.model.dtype)
        output = self.model.generate(**inputs, **generate_kwargs)
        length = int(inputs["attention_mask"].sum())
        work = RegionWork(len(requests), len(requests), len(requests), len(requests), length, 0, length)
        return self._new_tokens(output, inputs["input_ids"].shape[1]), _first_logits(output), work

    def _generate_shared(self, requests: list[RegionRequest], generate_kwargs: dict):
        model, processor = self.model, self.processor
        tokens = self._tokenize([request.text for request in requests])
        image_token_id = processor.image_token_id

        # Group by image, by region (image and mask), and by the prompt up to its last image token.
        image_keys: dict[int, str] = {}
        pixels: dict[str, np.ndarray] = {}
        masks: dict[tuple[str, str], np.ndarray] = {}
        groups: dict[tuple, _Group] = {}
        image_processor = processor.image_processor
        for index, (request, ids) in enumerate(zip(requests, tokens, strict=True)):
            image_key = image_keys.get(id(request.image))
            if image_key is None:
                image_key = image_keys[id(request.image)] = image_content_key(request.image)
            if image_key not in pixels:
                pixels[image_key] = image_processor.preprocess_image(request.image)
            mask_key, loaded = _mask_key(request.mask, request.image, index)
            region_key = (image_key, mask_key)
            if region_key not in masks:
                masks[region_key] = image_processor.preprocess_mask(loaded, request.image)
            last_image = len(ids) - ids[::-1].index(image_token_id)
            group_key = (region_key, tuple(ids[:last_image]))
            group = groups.setdefault(group_key, _Group(image_key, region_key, []))
            group.indices.append(index)
        for group in groups.values():
            group.prefix = _common_prefix([tokens[i] for i in group.indices])

        # Vision: the slow path once per image (unless it reads the mask), the rest once per region.
        tower = model.model.vision_tower
        device, dtype = tower.fast_mask_embed.weight.device, model.dtype
        image_index = {key: i for i, key in enumerate(pixels)}
        region_index = {key: i for i, key in enumerate(masks)}
        pixel_values = torch.from_numpy(np.stack(list(pixels.values()))).to(device, dtype)
        mask_values = torch.from_numpy(np.stack(list(masks.values()))).to(device, dtype)
        region_images = torch.tensor([image_index[image_key] for image_key, _ in masks], device=device)
        region_pixels = pixel_values[region_images]
        if tower.slow_path_reads_mask:
            slow_map, images_encoded = None, len(masks)
        else:
            slow_map, images_encoded = tower.slow_features(pixel_values)[region_images], len(pixels)
        features = model.model.get_image_features(region_pixels, mask_values, slow_map=slow_map, return_dict=True)
        features = features.pooler_output

        # Prefill each group's common prefix (left-padded), then copy its cache rows for the group's questions.
        group_list = list(groups.values())
        pad_id = _pad_id(model, processor)
        embed_device = model.get_input_embeddings().weight.device
        prefix_ids, prefix_mask = _left_pad([group.prefix for group in group_list], pad_id, embed_device)
        prefix_features = features[[region_index[group.region_key] for group in group_list]]
        inputs_embeds = model.get_input_embeddings()(prefix_ids)
        inputs_embeds = model.model.merge_image_features(prefix_ids, inputs_embeds, prefix_features)
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        all_ones = bool(prefix_mask.all())
        model.model.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=None if all_ones else prefix_mask,
            position_ids=_position_ids(prefix_mask),
            cache=cache,
            use_cache=True,
        )

        rows = [(g, index) for g, group in enumerate(group_list) for index in group.indices]
        expand = generate_kwargs.get("num_beams", model.generation_config.num_beams) or 1
        cache.batch_select_indices([g for g, _ in rows for _ in range(expand)])
        suffixes = [tokens[index][len(group_list[g].prefix) :] for g, index in rows]
        suffix_ids, suffix_mask = _left_pad(suffixes, pad_id, embed_device)
        rows_ids = [g for g, _ in rows]
        input_ids = torch.cat([prefix_ids[rows_ids], suffix_ids], dim=1)
        attention_mask = torch.cat([prefix_mask[rows_ids], suffix_mask], dim=1)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **generate_kwargs)

        order = [index for _, index in rows]
        new_tokens = self._new_tokens(output, input_ids.shape[1])
        first_logits = _first_logits(output)
        position = {index: row for row, index in enumerate(order)}
        rank = [position[index] for index in range(len(requests))]
        work = RegionWork(
            requests=len(requests),
            images=images_encoded,
            regions=len(masks),
            prefixes=len(group_list),
            prefix_tokens=sum(len(group.prefix) for group in group_list),
            suffix_tokens=sum(len(suffix) for suffix in suffixes),
            plain_tokens=sum(len(ids) for ids in tokens),
        )
        return [new_tokens[row] for row in rank], None if first_logits is None else first_logits[rank], work

    def _new_tokens(self, output, prompt_length: int) -> list[list[int]]:
        """Generated ids per row after `prompt_length`, up to and including the first end-of-sequence token."""
        sequences = output.sequences if hasattr(output, "sequences") else output
        eos = self.model.generation_config.eos_token_id
        eos = set([eos] if isinstance(eos, int) else eos or [])
        result = []
        for row in sequences[:, prompt_length:].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
            result.append(row[:end])
        return result


def caption_regions(model, processor, image, masks, prompts, share: bool = True, batch_size: int | None = None,
                    system_prompt: str | None = None, **generate_kwargs) -> list:  # fmt: skip
    """`RegionCaptioner(model, processor, share, batch_size, system_prompt).caption(image, masks, prompts, ...)`."""
    captioner = RegionCaptioner(model, processor, share=share, batch_size=batch_size, system_prompt=system_prompt)
    return captioner.caption(image, masks, prompts, **generate_kwargs)


def image_content_key(image: Image.Image) -> str:
    """Content hash of an image's RGB pixels (the model never sees alpha: it carries the mask in lmms-eval)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.blake2b(rgb.tobytes(), digest_size=16)
    digest.update(repr(rgb.size).encode())
    return digest.hexdigest()


def _mask_key(mask: Any, image: Image.Image, index: int) -> tuple[str, np.ndarray | None]:
    """Content hash of a mask (decoded to bool `[H, W]`) and the decoded mask; `"whole"` for None."""
    if mask is None:
        return "whole", None
    try:
        loaded = load_mask(mask, image.height, image.width)
    except MaskError as err:
        raise MaskError(f"request {index}: field 'mask': {err}") from None
    digest = hashlib.blake2b(np.packbits(loaded).tobytes(), digest_size=16)
    digest.update(repr(loaded.shape).encode())
    return digest.hexdigest(), loaded


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    """The longest common prefix of token lists, leaving at least one token to every sequence."""
    limit = min(len(ids) for ids in sequences) - 1
    length = 0
    while length < limit and all(ids[length] == sequences[0][length] for ids in sequences):
        length += 1
    return sequences[0][:length]


def _left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`[n, longest]` ids padded on the left with `pad_id`, and the attention mask (0 on padding)."""
    longest = max(len(ids) for ids in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, -len(sequence) :] = torch.tensor(sequence)
            mask[row, -len(sequence) :] = 1
    return ids.to(device), mask.to(device)


def _position_ids(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Position ids as `generate` derives them from the attention mask (padding at 0)."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 0)


def _pad_id(model, processor) -> int:
    pad = processor.tokenizer.pad_token_id
    if pad is None:
        pad = model.generation_config.pad_token_id
    if isinstance(pad, list):
        pad = pad[0]
    return 0 if pad is None else int(pad)


def _first_logits(output) -> torch.Tensor | None:
    logits = getattr(output, "logits", None)
    return None if logits is None else logits[0].float().cpu()


__all__ = ["RegionCaptioner", "RegionGeneration", "RegionRequest", "RegionWork", "caption_regions", "image_content_key"]
