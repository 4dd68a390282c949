"""FineCaption as an lmms-eval model: ``lmms-eval --model finecaption --model_args pretrained=DIR``.

Two classes share one batched generation path: ``FineCaptionChat`` (lmms-eval's default slot, fed
``doc_to_messages``) and ``FineCaption`` (``--force_simple``, fed ``doc_to_text``/``doc_to_visual``).
A region reaches the model through the visual itself: an RGBA image whose alpha channel is the mask
(``visual_prompts.image_with_mask_alpha``); an image without alpha means the whole image.

Model args (``--model_args key=value,...``): ``pretrained`` (local checkpoint folder), ``dtype``
(``auto``, ``float32``, ``bfloat16``, ``float16``), ``device``, ``device_map``, ``attn_implementation``,
``load_in_4bit``/``load_in_8bit`` (bitsandbytes; vision side, projector and lm_head stay unquantised),
``max_new_tokens`` (overrides the task's), ``system_prompt`` (text or a file), ``use_cache``,
``on_error`` (``skip``: a failing batch is retried one request at a time and a request that still
fails is answered ``""`` and logged, so one bad visual or an out-of-memory batch costs only that
answer; ``raise``: the first error ends the run).
``share_regions`` (default True): the requests of one image are batched together and answered through
``region_captioning.RegionCaptioner``: the image's slow path runs once, each (image, mask) pair's fast
path and prompt prefix once, and its questions are decoded together from copies of the prefix's KV cache
(greedy answers equal the plain path's). The image is recognised by the hash of its RGB pixels and the
region by the mask in its alpha; visuals are loaded twice (once to group, once to answer). False: the
plain path.
``--batch_size N`` batches requests with equal generation settings (left padding); results come
back in request order. With ``share_regions`` a batch holds whole images: images are added while it
holds at most N requests, and an image with more requests is a batch of its own.
Under ``torchrun``/``accelerate launch`` each process takes its share.
``answers_cache=DIR``: every answer is appended to ``DIR/answers-rank<R>.jsonl`` (flushed and synced) as soon
as its batch is decoded, keyed by the request (task, split, doc id, prompt, generation settings) and the model
settings that change answers; a run given the same ``DIR`` again answers from it what it holds and generates
only the rest, so a run killed part-way resumes without redoing finished answers (lmms-eval's own
``--use_cache`` stores a process's answers only once all of them are done). Failed answers are not kept.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from PIL import Image
from tqdm import tqdm

from .conversation import IMAGE_TOKEN
from .masks import MaskError
from .visual_prompts import mask_from_alpha

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ON_ERROR = ("skip", "raise")


class FineCaption(lmms):
    """FineCaption for simple requests ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``."""

    is_simple = True
    _gen_kwargs_index = 1

    def __init__(
        self,
        pretrained: str,
        dtype: str = "auto",
        device: str | None = None,
        device_map: str | None = None,
        attn_implementation: str | None = None,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        max_new_tokens: int | None = None,
        batch_size: int | str = 1,
        system_prompt: str | None = None,
        use_cache: bool = True,
        on_error: str = "skip",
        share_regions: bool = True,
        answers_cache: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from .lora import quantization_config
        from .region_captioning import RegionWork

        if not Path(pretrained).is_dir():
            raise ValueError(f"pretrained={pretrained!r} is not a folder: give a local checkpoint folder")
        if str(batch_size).startswith("auto"):
            raise ValueError("--batch_size auto is not supported by finecaption: give a number")
        if load_in_4bit and load_in_8bit:
            raise ValueError("choose one of load_in_4bit and load_in_8bit")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected auto or one of {', '.join(DTYPES)}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}")
        torch_dtype = DTYPES.get(dtype, "auto")

        self.accelerator = Accelerator()
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        # Several processes: one device each (accelerate picks cuda:LOCAL_RANK, or the CPU).
        self._device = torch.device(device if device and self._world_size == 1 else self.accelerator.device)
        bits = 4 if load_in_4bit else 8 if load_in_8bit else 16
        compute_dtype = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.bfloat16
        quantization = quantization_config(bits, "nf4", True, compute_dtype)
        if device_map is None and quantization is not None:
            device_map = {"": str(self._device)}  # bitsandbytes quantises while placing the weights
        self._model = AutoModelForImageTextToText.from_pretrained(
            pretrained,
            dtype=torch_dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            quantization_config=quantization,
        )
        if device_map is None:
            self._model.to(self._device)
        else:
            self._device = self._model.device
        self._model.eval()
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.processor.tokenizer.padding_side = "left"
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.system_prompt = self._resolve_system_prompt(system_prompt)
        self.use_cache = bool(use_cache)
        self.on_error = on_error
        self.share_regions = bool(share_regions)
        self._region_work = RegionWork()
        self.answers_cache = None
        if answers_cache:
            settings = {
                "pretrained": str(Path(pretrained).resolve()),
                "dtype": dtype,
                "bits": bits,
                "max_new_tokens": self.max_new_tokens,
                "system_prompt": self.system_prompt,
                "class": type(self).__name__,
            }
            self.answers_cache = AnswerCache(answers_cache, settings, self._rank)
        logger.info(
            "FineCaption from %s on %s (rank %d of %d)",
            pretrained,
            self._device,
            self._rank,
            self._world_size,
        )

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    # -- requests -> (messages, images) ----------------------------------------------------------------

    def _request_messages(self, args: tuple) -> tuple[list[dict], list[Image.Image]]:
        """The chat messages (HF format) and the images of one request."""
        return self._simple_request_messages(args)

    def _simple_request_messages(self, args: tuple) -> tuple[list[dict], list[Image.Image]]:
        """Messages and images of ``(context, _, doc_to_visual, doc_id, task, split)``."""
        context, _, doc_to_visual, doc_id, task, split = args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = list(visuals or [])
        content = [{"type": "image"} for _ in visuals]
        content.append({"type": "text", "text": context.replace(IMAGE_TOKEN, "").strip()})
        return [{"role": "user", "content": content}], visuals

    def _inputs(
        self, requests: Sequence[tuple], parse=None
    ) -> tuple[list[str], list[Image.Image], list[Any]]:
        """Prompt texts, RGB images and masks (None: whole image) of requests parsed by ``parse``."""
        parse = parse or self._request_messages
        texts, images, masks = [], [], []
        for args in requests:
            messages, visuals = parse(args)
            messages = self._apply_system_prompt(messages, self.system_prompt)
            texts.append(
                self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            )
            for visual in visuals:
                if not isinstance(visual, Image.Image):
                    raise TypeError(
                        f"finecaption takes PIL images, got {type(visual).__name__} "
                        f"(task {args[-2]!r}, doc {args[-3]})"
                    )
                try:
                    masks.append(mask_from_alpha(visual))
                except MaskError as error:  # e.g. a transparent PNG of another task: not a region
                    logger.warning("task %r doc %s: %s; using the whole image", args[-2], args[-3], error)
                    masks.append(None)
                images.append(visual.convert("RGB"))
        return texts, images, masks

    def _encode(self, texts: list[str], images: list[Image.Image], masks: list[Any]):
        inputs = self.processor(
            text=texts,
            images=images or None,
            masks=masks if images else None,
            return_tensors="pt",
            padding=True,
        )
        return inputs.to(self.device, dtype=self.model.dtype)

    # -- generation ------------------------------------------------------------------------------------

    def _generation_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """``generate()`` keyword arguments and stop strings from lmms-eval's generation kwargs."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else [stop for stop in until if stop]
        max_new_tokens = self.max_new_tokens or int(gen_kwargs.get("max_new_tokens", 256))
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        settings = {
            "max_new_tokens": max_new_tokens,
            "num_beams": int(gen_kwargs.get("num_beams") or 1),
            "do_sample": temperature > 0,
            "use_cache": self.use_cache,
        }
        if temperature > 0:
            settings["temperature"] = temperature
            if gen_kwargs.get("top_p") is not None:
                settings["top_p"] = float(gen_kwargs["top_p"])
        return settings, until

    @torch.inference_mode()
    def _generate(self, requests: Sequence[tuple], gen_kwargs: dict) -> list[str]:
        """Answers to a batch of requests that share ``gen_kwargs``."""
        settings, until = self._generation_settings(gen_kwargs)
        texts, images, masks = self._inputs(requests)
        one_image_each = len(images) == len(texts) and all(text.count(IMAGE_TOKEN) == 1 for text in texts)
        if self.share_regions and one_image_each:
            answers = self._generate_shared(texts, images, masks, settings)
        else:
            inputs = self._encode(texts, images, masks)
            output = self.model.generate(**inputs, **settings)
            answers = self.tokenizer.batch_decode(
                output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
        return [_cut(answer, until).strip() for answer in answers]

    def _generate_shared(self, texts: list[str], images: list[Image.Image], masks: list[Any], settings: dict):
        """Answers (not yet cut) with the work shared between the requests' images, regions and prompt prefixes."""
        from .region_captioning import RegionCaptioner, RegionRequest

        captioner = RegionCaptioner(self.model, self.processor)
        requests = [RegionRequest(*request) for request in zip(texts, images, masks, strict=True)]
        tokens = captioner.generate(requests, **settings).tokens
        self._region_work += captioner.last_work
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    def _image_key(self, args: tuple, position: int) -> Any:
        """The content hash of a request's one image; a key of its own for a request without exactly one image,
        or whose visual fails to load (the batch that holds it reports the error)."""
        from .region_captioning import image_content_key

        try:
            _, visuals = self._request_messages(args)
        except Exception:
            return ("request", position)
        if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
            return ("request", position)
        return image_content_key(visuals[0])

    def _region_batches(self, arguments: Sequence[tuple]) -> tuple[list[list[tuple]], list[int]]:
        """Batches for ``share_regions``, and the request index of each answer in batch order.

        As the plain path, requests are grouped by generation settings and ordered longest prompt first; then
        each image's requests are moved up to its first one, and batches take whole images while they hold at
        most ``batch_size`` requests (an image with more requests is a batch of its own). With distinct images,
        these are the plain path's batches.
        """
        index = self._gen_kwargs_index
        keys = [self._image_key(args, position) for position, args in enumerate(arguments)]
        groups: dict[str, list[int]] = {}
        for position, args in enumerate(arguments):
            groups.setdefault(json.dumps(args[index], sort_keys=True, default=str), []).append(position)
        batches, order = [], []
        for members in groups.values():
            members.sort(key=lambda i: (-len(arguments[i][0]), arguments[i][-3]))
            first = {}
            for rank, position in enumerate(members):
                first.setdefault(keys[position], rank)
            members.sort(key=lambda i: first[keys[i]])  # stable: longest prompt first within an image
            batch: list[int] = []
            for _, image_members in itertools.groupby(members, key=lambda i: keys[i]):
                image_members = list(image_members)
                if batch and len(batch) + len(image_members) > self.batch_size:
                    batches.append(batch)
                    batch = []
                batch.extend(image_members)
            if batch:
                batches.append(batch)
        for batch in batches:
            order.extend(batch)
        return [[arguments[i] for i in batch] for batch in batches], order

    def generate_until(self, requests: list[Instance]) -> list[str]:
        arguments = [request.args for request in requests]
        if self.answers_cache is None:
            return self._generate_all(arguments)
        cache, index = self.answers_cache, self._gen_kwargs_index
        keys = [cache.key(args[-2], args[-1], args[-3], args[0], args[index]) for args in arguments]
        answers = [cache.get(key) for key in keys]
        missing = [position for position, answer in enumerate(answers) if answer is None]
        logger.info(
            "finecaption answers_cache %s: %d of %d answers kept from an earlier run, %d to generate",
            cache.folder, len(arguments) - len(missing), len(arguments), len(missing),
        )  # fmt: skip
        if missing:
            generated = self._generate_all([arguments[position] for position in missing])
            for position, answer in zip(missing, generated, strict=True):
                answers[position] = answer
        for position, args in enumerate(arguments):  # lmms-eval's own cache, as for generated answers
            if position not in missing:
                self.cache_hook.add_partial("generate_until", (args[0], args[index]), answers[position])
        return answers

    def _generate_all(self, arguments: list[tuple]) -> list[str]:
        """Answers to every request, in request order; each batch's answers go to ``answers_cache`` as they come."""
        index = self._gen_kwargs_index
        if self.share_regions:
            self._region_work = type(self._region_work)()
            batches, order = self._region_batches(arguments)
        else:
            # Longest prompts first (one padding length per batch), batches share generation settings.
            collator = utils.Collator(
                arguments,
                lambda args: (-len(args[0]), args[-3]),
                group_fn=lambda args: args[index],
                grouping=True,
            )
            batches = collator.get_batched(n=self.batch_size)
        answers: list[str] = []
        failed = 0
        progress = tqdm(total=len(arguments), disable=self.rank != 0, desc="FineCaption responding")
        for batch in batches:
            batch_answers = self._generate_or_skip(batch, batch[0][index])
            for args, answer in zip(batch, batch_answers, strict=True):
                if answer is None:
                    failed += 1
                else:
                    self.cache_hook.add_partial("generate_until", (args[0], args[index]), answer)
                    if self.answers_cache is not None:
                        self.answers_cache.put(
                            self.answers_cache.key(args[-2], args[-1], args[-3], args[0], args[index]), answer
                        )
            answers.extend("" if answer is None else answer for answer in batch_answers)
            progress.update(len(batch))
        progress.close()
        if failed:
            logger.warning("finecaption: %d of %d requests failed and were answered with ''", failed, len(arguments))
        if not self.share_regions:
            return collator.get_original(answers)
        logger.info("finecaption share_regions: %s", self._region_work)
        restored: list[str] = [""] * len(arguments)
        for position, answer in zip(order, answers, strict=True):
            restored[position] = answer
        return restored

    def _generate_or_skip(self, batch: Sequence[tuple], gen_kwargs: dict) -> list[str | None]:
        """Answers to ``batch``; with ``on_error=skip`` a failing batch is retried one request at a
        time, and a request that fails alone gets None (logged with its task and doc)."""
        if self.on_error == "raise":
            return self._generate(batch, gen_kwargs)
        try:
            return self._generate(batch, gen_kwargs)
        except Exception as error:
            _release_memory(error)
            if len(batch) == 1:
                logger.warning("task %r doc %s failed, answered with '': %r", batch[0][-2], batch[0][-3], error)
                return [None]
            logger.warning("a batch of %d failed (%r): retrying one request at a time", len(batch), error)
        return [answer for args in batch for answer in self._generate_or_skip([args], gen_kwargs)]

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Log-probability of each continuation after its prompt, and whether it is the greedy one."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="FineCaption scoring"):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            simple_args = (context, None, doc_to_visual, doc_id, task, split)
            inputs = self._encode(*self._inputs([simple_args], parse=self._simple_request_messages))
            # The continuation is text: a special-token string in it is not a control token.
            target = self.tokenizer(
                continuation, add_special_tokens=False, split_special_tokens=True, return_tensors="pt"
            ).input_ids
            target = target.to(self.device)
            prompt_length = inputs["input_ids"].shape[1]
            inputs["input_ids"] = torch.cat([inputs["input_ids"], target], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            logits = self.model(**inputs).logits[:, prompt_length - 1 : -1].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            score = log_probs.gather(-1, target[..., None]).sum().item()
            results.append((score, bool((logits.argmax(-1) == target).all())))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("finecaption answers single-turn requests only")


class FineCaptionChat(FineCaption):
    """FineCaption for chat requests ``(context, doc_to_messages, gen_kwargs, doc_id, task, split)``."""

    is_simple = False
    _gen_kwargs_index = 2

    def _request_messages(self, args: tuple) -> tuple[list[dict], list[Image.Image]]:
        _, doc_to_messages, _, doc_id, task, split = args
        chat = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))
        images, videos, audios = chat.extract_media()
        if videos or audios:
            raise ValueError(f"finecaption takes images and text only (task {task!r}, doc {doc_id})")
        return chat.to_hf_messages(), images


class AnswerCache:
    """Answers on disk, written as they are made: ``FOLDER/answers-rank<R>.jsonl``, one JSON line each
    ``{"key", "model", "answer"}``, flushed and synced per batch.

    ``key`` names the request, ``model`` the settings that change answers (a hash of ``settings``); on start
    every ``answers-*.jsonl`` of the folder is read (any rank, any earlier number of processes), keeping the
    answers of the same settings. A line cut by a kill is skipped.
    """

    def __init__(self, folder: str | Path, settings: dict, rank: int = 0) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"answers-rank{rank}.jsonl"
            cut = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
            self.file = path.open("a", encoding="utf-8")
            if cut:  # a line cut by a kill: the next answer starts on a line of its own
                self.file.write("\n")
        except OSError as error:
            raise ValueError(f"answers_cache={str(folder)!r} cannot be written: {error}") from None
        self.model = _digest(settings)
        self.answers: dict[str, str] = {}
        other = 0
        for path in sorted(self.folder.glob("answers-*.jsonl")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the last line of a killed run
                if not isinstance(entry, dict) or not isinstance(entry.get("answer"), str):
                    continue
                if entry.get("model") == self.model:
                    self.answers[entry.get("key")] = entry["answer"]
                else:
                    other += 1
        if other:
            logger.warning("answers_cache %s: %d answers of other model settings are not used", self.folder, other)

    @staticmethod
    def key(task: str, split: str, doc_id: Any, context: str, gen_kwargs: Any) -> str:
        return _digest([task, split, doc_id, context, gen_kwargs])

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def put(self, key: str, answer: str) -> None:
        self.answers[key] = answer
        self.file.write(json.dumps({"key": key, "model": self.model, "answer": answer}, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _release_memory(error: Exception) -> None:
    # An out-of-memory batch leaves cached blocks behind; the one-by-one retry needs them back.
    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()


def _cut(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of ``stops``."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text
