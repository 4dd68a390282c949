"""Region captioning with shared work: identical to the plain per-request path, and really skipping work."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

import finecaption_plugin  # noqa: F401  (registers the Auto classes)
from finecaption_plugin.region_captioning import RegionCaptioner, RegionRequest

QUESTIONS = [
    "What color is it?",
    "Describe the shape of the masked region in detail, covering its outline and size.",
    "Texture?",
    "What is the material of the masked object? Answer in one sentence.",
]
GREEDY = {"max_new_tokens": 6, "do_sample": False}


def _image(seed: int, height: int, width: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _box(image: Image.Image, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((image.height, image.width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _scene() -> list[tuple[Image.Image, list[tuple[np.ndarray | None, list[str]]]]]:
    """Three images of different sizes, 2-3 regions each (one the whole image), 1-3 questions per region."""
    scenes = []
    for index, (height, width) in enumerate([(64, 96), (100, 70), (80, 80)]):
        image = _image(index, height, width)
        regions = [
            (_box(image, 5, 5, 40, 30), QUESTIONS[index : index + 3]),
            (_box(image, 20 + index, 10, 60, 50 + index), [QUESTIONS[3]]),
        ]
        if index != 1:
            regions.append((None, QUESTIONS[:2]))
        scenes.append((image, regions))
    return scenes


def _requests(captioner: RegionCaptioner) -> list[RegionRequest]:
    return [
        RegionRequest(captioner.prompt(question), image, mask)
        for image, regions in _scene()
        for mask, questions in regions
        for question in questions
    ]


def _open_mask_branch(model, seed: int = 0):
    """Random (non-zero) mask convolutions and adapter projections: masks and the slow path change the output."""
    generator = torch.Generator().manual_seed(seed)
    tower = model.model.vision_tower
    weights = [tower.fast_mask_embed.weight]
    if tower.slow_mask_embed is not None:
        weights.append(tower.slow_mask_embed.weight)
    weights += [w for adapter in tower.adapters for w in (adapter.slow_proj.weight, adapter.fast_proj.weight)]
    with torch.no_grad():
        for weight in weights:
            noise = torch.randn(weight.shape, generator=generator) * 0.5
            weight.copy_(noise.to(weight.dtype))
    return model.eval()


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    """Tiny models by (dtype, slow_mask_embedding), built on first use and shared by the module's tests."""
    cache = {}

    def get(dtype: torch.dtype = torch.float32, slow_mask_embedding: bool = False):
        key = (dtype, slow_mask_embedding)
        if key not in cache:
            model = AutoModelForImageTextToText.from_pretrained(
                tiny_checkpoint, slow_mask_embedding=slow_mask_embedding
            )
            cache[key] = _open_mask_branch(model).to(dtype)
        return cache[key]

    return get


def _tolerance(dtype: torch.dtype, logits: torch.Tensor) -> float:
    # float32: 1e-4. bfloat16 rounds every activation to 8 bits of mantissa, so two orders of summation (prefix and
    # suffix apart, or in one pass) differ by a few units in the last place of the logits (~4e-3 at 0.5).
    return 1e-4 if dtype == torch.float32 else 4 * 2**-8 * float(logits.abs().max())


def _plain_step_logits(model, processor, requests: list[RegionRequest]) -> list[torch.Tensor]:
    """Each request's logits `[steps, vocab]` on the plain path, alone, at every greedy step."""
    logits = []
    for request in requests:
        inputs = processor(text=[request.text], images=[request.image], masks=[request.mask], return_tensors="pt")
        output = model.generate(
            **inputs.to(dtype=model.dtype), **GREEDY, output_logits=True, return_dict_in_generate=True
        )
        logits.append(torch.cat(output.logits).float())
    return logits


def _assert_same_greedy_tokens(tokens, expected, dtype, step_logits) -> None:
    """float32: identical. bfloat16: identical up to a step where the plain path's top two logits are tied within
    bfloat16's resolution (argmax then follows rounding, and the texts may part); such ties must stay rare."""
    if dtype == torch.float32:
        assert tokens == expected
        return
    ties = 0
    for row, (got, want, logits) in enumerate(zip(tokens, expected, step_logits, strict=True)):
        step = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        if step is None:
            assert got == want, row
            continue
        gap = (logits[step, want[step]] - logits[step, got[step]]).item()
        assert gap <= 2**-7 * logits[step].abs().max().item(), (row, step, gap)
        ties += 1
    assert ties <= len(tokens) // 8, ties


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("slow_mask_embedding", [False, True], ids=["shared-slow-map", "slow-mask-embedding"])
def test_shared_path_equals_the_plain_per_request_path(models, processor, dtype, slow_mask_embedding):
    model = models(dtype, slow_mask_embedding)
    plain = RegionCaptioner(model, processor, share=False, batch_size=1)
    requests = _requests(plain)
    expected = plain.generate(requests, output_first_logits=True, **GREEDY)
    step_logits = _plain_step_logits(model, processor, requests) if dtype != torch.float32 else None
    # One batch for everything, and batches of 4 (images split across batches, a region's questions too).
    for batch_size in (None, 4):
        shared = RegionCaptioner(model, processor, batch_size=batch_size)
        result = shared.generate(requests, output_first_logits=True, **GREEDY)
        _assert_same_greedy_tokens(result.tokens, expected.tokens, dtype, step_logits)
        difference = (result.first_logits - expected.first_logits).abs().max().item()
        assert difference <= _tolerance(dtype, expected.first_logits), (batch_size, difference)
        assert shared.last_work.prefixes < len(requests)
    assert len({tuple(tokens) for tokens in expected.tokens}) > 1
    # The masks matter (the mask branch is open): same image and question, other region, other logits.
    first, whole = requests[0], requests[4]
    assert first.image is whole.image and first.text == whole.text and whole.mask is None
    assert (expected.first_logits[0] - expected.first_logits[4]).abs().max() > 1e-3


def _count_work(model):
    """Forward hooks counting slow-path rows, fast-path rows and the language model's calls `(batch, length)`."""
    counts = {"slow": 0, "fast": 0, "lm": []}
    tower = model.model.vision_tower

    def on_lm(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids")
        counts["lm"].append(tuple((embeds if embeds is not None else ids).shape[:2]))

    handles = [
        tower.slow_tower.register_forward_hook(lambda m, a, o: counts.__setitem__("slow", counts["slow"] + len(a[0]))),
        tower.fast_mask_embed.register_forward_hook(
            lambda m, a, o: counts.__setitem__("fast", counts["fast"] + len(a[0]))
        ),
        model.model.language_model.register_forward_pre_hook(on_lm, with_kwargs=True),
    ]
    return counts, handles


@pytest.mark.parametrize("slow_mask_embedding", [False, True], ids=["shared-slow-map", "slow-mask-embedding"])
def test_shared_path_skips_vision_and_prefill_work(models, processor, slow_mask_embedding):
    model = models(torch.float32, slow_mask_embedding)
    counts = {}
    for share in (False, True):
        captioner = RegionCaptioner(model, processor, share=share, batch_size=None if share else 1)
        requests = _requests(captioner)
        counts[share], handles = _count_work(model)
        try:
            captioner.generate(requests, **GREEDY)
        finally:
            for handle in handles:
                handle.remove()
    images, regions = 3, 8
    requests = sum(len(questions) for _, scene in _scene() for _, questions in scene)
    assert requests == 15
    plain, shared = counts[False], counts[True]
    assert plain["slow"] == plain["fast"] == requests
    assert shared["slow"] == (regions if slow_mask_embedding else images) and shared["fast"] == regions
    # Plain: one prefill of the whole prompt per request. Shared: one prefill of the 8 regions' prefixes, then one
    # of the 15 suffixes (a few tokens each) after the cached prefixes, then the decoding steps.
    plain_prefills = [shape for shape in plain["lm"] if shape[1] > 1]
    assert len(plain_prefills) == requests and all(batch == 1 for batch, _ in plain_prefills)
    (prefix, suffix), steps = shared["lm"][:2], shared["lm"][2:]
    prompt_length = plain_prefills[0][1]
    assert prefix[0] == regions and prefix[1] > prompt_length - 30
    assert suffix[0] == requests and suffix[1] < prefix[1] // 2
    assert all(shape == (requests, 1) for shape in steps) and len(steps) == GREEDY["max_new_tokens"] - 1
    # Tokens prefilled, padding left out: each region's prefix once, then each question's suffix.
    work = captioner.last_work
    assert work.plain_tokens == sum(length for _, length in plain_prefills)
    assert work.prefixes == regions and work.prefix_tokens <= prefix[0] * prefix[1]
    assert work.prefix_tokens + work.suffix_tokens < 0.65 * work.plain_tokens


def test_caption_regions_returns_captions_in_the_shape_of_the_prompts(models, processor, caplog):
    model = models()
    (image, regions), (other, other_regions) = _scene()[:2]
    masks = [mask for mask, _ in regions]
    prompts = ["What color is it?", ["Texture?", "What color is it?"], "Texture?"]
    caplog.set_level(logging.INFO, logger="finecaption_plugin.region_captioning")
    captions = model.caption_regions(processor, image, masks, prompts, **GREEDY)
    assert "3 requests" not in caplog.text and "4 requests: 1 slow-path images, 3 regions" in caplog.text
    plain = RegionCaptioner(model, processor, share=False, batch_size=1)
    alone = plain.answer(
        [RegionRequest(plain.prompt(question), image, masks[i]) for i, question in
         [(0, prompts[0]), (1, prompts[1][0]), (1, prompts[1][1]), (2, prompts[2])]],
        **GREEDY,
    )  # fmt: skip
    assert captions == [alone[0], alone[1:3], alone[3]]
    assert all(isinstance(caption, str) and caption for caption in alone)
    # One question for every mask; several images at once.
    assert model.caption_regions(processor, image, masks, "Texture?", **GREEDY) == [
        model.caption_regions(processor, image, [masks[0]], ["Texture?"], **GREEDY)[0],
        alone[1],
        alone[3],
    ]
    other_masks = [mask for mask, _ in other_regions]
    both = model.caption_regions(
        processor, [image, other], [masks, other_masks], [prompts, "What color is it?"], **GREEDY
    )
    assert both[0] == captions
    assert both[1] == model.caption_regions(processor, other, other_masks, "What color is it?", **GREEDY)
    with pytest.raises(ValueError, match="3 masks but 2 prompt entries"):
        model.caption_regions(processor, image, masks, prompts[:2])


def test_prompts_that_differ_before_the_image_are_not_merged(models, processor):
    model = models()
    image, regions = _scene()[0]
    mask = regions[0][0]
    requests = [
        RegionRequest(RegionCaptioner(model, processor, system_prompt=system).prompt(question), image, mask)
        for system in ("You caption regions.", None)
        for question in QUESTIONS[:2]
    ]
    shared = RegionCaptioner(model, processor)
    tokens = shared.generate(requests, **GREEDY).tokens
    assert shared.last_work.regions == 1 and shared.last_work.prefixes == 2
    assert tokens == RegionCaptioner(model, processor, share=False, batch_size=1).generate(requests, **GREEDY).tokens


def test_beam_search_and_settings_without_cache(models, processor):
    model = models()
    plain = RegionCaptioner(model, processor, share=False, batch_size=1)
    requests = _requests(plain)[:6]
    beams = {"max_new_tokens": 4, "num_beams": 2, "do_sample": False}
    shared = RegionCaptioner(model, processor)
    assert shared.generate(requests, **beams).tokens == plain.generate(requests, **beams).tokens
    assert shared.last_work.prefixes < len(requests)
    # Without a cache there is nothing to continue from: the plain path answers.
    no_cache = {**GREEDY, "use_cache": False}
    assert shared.generate(requests, **no_cache).tokens == plain.generate(requests, **GREEDY).tokens
    assert shared.last_work.prefixes == len(requests) and shared.last_work.suffix_tokens == 0


@pytest.mark.parametrize("loading", ["4bit", "device_map_auto"])
def test_quantised_and_dispatched_models(tiny_checkpoint, processor, loading):
    if loading == "4bit":
        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")}
    else:
        kwargs = {"device_map": "auto", "dtype": torch.bfloat16}
    model = _open_mask_branch(AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, **kwargs))
    plain = RegionCaptioner(model, processor, share=False, batch_size=1)
    requests = _requests(plain)[:6]  # the first image: 3 regions, 6 questions
    shared = RegionCaptioner(model, processor)
    assert shared.generate(requests, **GREEDY).tokens == plain.generate(requests, **GREEDY).tokens
    assert shared.last_work.images == 1 and shared.last_work.regions == 3
