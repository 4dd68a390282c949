"""`--model finecaption` in lmms-eval: registration, batching, request order, masks from alpha, settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image

from finecaption_plugin.lmms_eval_model import FineCaption, FineCaptionChat
from finecaption_plugin.visual_prompts import image_with_mask_alpha

PROMPTS = [
    "Describe the color of the masked region.",
    "Describe the masked region in detail, covering all of its attributes.",
    "Describe the image in detail.",
    "What shape is it?",
    "Describe the shape of the masked region.",
]


def _docs() -> list[dict]:
    """Five documents with images of different sizes and colours; every other one with a region."""
    docs = []
    for index, prompt in enumerate(PROMPTS):
        rng = np.random.default_rng(index)
        height, width = 64 + 16 * index, 96 - 8 * index
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        mask = np.zeros((height, width), bool)
        mask[10 : 30 + index, 5:40] = True
        docs.append({"prompt": prompt, "image": image, "mask": mask if index % 2 == 0 else None})
    return docs


def _visual(doc: dict) -> list[Image.Image]:
    return [doc["image"] if doc["mask"] is None else image_with_mask_alpha(doc["image"], doc["mask"])]


def _messages(doc: dict) -> list[dict]:
    content = [{"type": "image", "url": image} for image in _visual(doc)]
    return [{"role": "user", "content": [*content, {"type": "text", "text": doc["prompt"]}]}]


def _simple_requests(gen_kwargs: dict) -> list[Instance]:
    return [
        Instance(
            "generate_until",
            (doc["prompt"], dict(gen_kwargs), _visual, index, "t", "test"),
            0,
            {"task": "t", "doc_id": index, "repeats": 1},
        )
        for index, doc in enumerate(_docs())
    ]


def _chat_requests(gen_kwargs: dict) -> list[Instance]:
    return [
        Instance(
            "generate_until",
            (doc["prompt"], _messages, dict(gen_kwargs), index, "t", "test"),
            0,
            {"task": "t", "doc_id": index, "repeats": 1},
        )
        for index, doc in enumerate(_docs())
    ]


@pytest.fixture(scope="module")
def simple(tiny_checkpoint: Path) -> FineCaption:
    model = FineCaption(pretrained=str(tiny_checkpoint), dtype="float32", batch_size="1")
    model.task_dict = {"t": {"test": _docs()}}
    return model


@pytest.fixture(scope="module")
def chat(tiny_checkpoint: Path) -> FineCaptionChat:
    model = FineCaptionChat(pretrained=str(tiny_checkpoint), dtype="float32", batch_size="3")
    model.task_dict = {"t": {"test": _docs()}}
    return model


GREEDY = {"max_new_tokens": 6, "temperature": 0, "do_sample": False, "until": []}


def test_entry_point_registers_both_classes():
    from lmms_eval.models import get_model

    assert get_model("finecaption") is FineCaptionChat
    assert get_model("finecaption", force_simple=True) is FineCaption


def test_batched_answers_equal_unbatched_in_request_order(simple: FineCaption, monkeypatch: pytest.MonkeyPatch):
    one_by_one = simple.generate_until(_simple_requests(GREEDY))
    monkeypatch.setattr(simple, "batch_size_per_gpu", 3)
    batch_sizes = []
    generate = simple._generate
    monkeypatch.setattr(simple, "_generate", lambda batch, kw: batch_sizes.append(len(batch)) or generate(batch, kw))
    batched = simple.generate_until(_simple_requests(GREEDY))
    assert sorted(batch_sizes) == [2, 3]
    assert batched == one_by_one
    # Request order: each answer is the one its request gets alone.
    alone = [simple.generate_until(_simple_requests(GREEDY)[i : i + 1])[0] for i in (0, 3)]
    assert [batched[0], batched[3]] == alone
    assert len(set(batched)) > 1  # distinct prompts and images give distinct answers


def test_chat_requests_answer_like_simple_ones(simple: FineCaption, chat: FineCaptionChat):
    assert chat.generate_until(_chat_requests(GREEDY)) == simple.generate_until(_simple_requests(GREEDY))


def test_requests_with_other_settings_are_batched_apart(chat: FineCaptionChat, monkeypatch: pytest.MonkeyPatch):
    requests = _chat_requests(GREEDY)
    for request in requests[1::2]:
        request.arguments[2]["max_new_tokens"] = 2
    batches = []
    generate = chat._generate
    monkeypatch.setattr(
        chat, "_generate", lambda batch, kw: batches.append(([a[3] for a in batch], kw)) or generate(batch, kw)
    )
    answers = chat.generate_until(requests)
    assert sorted((sorted(ids), kw["max_new_tokens"]) for ids, kw in batches) == [([0, 2, 4], 6), ([1, 3], 2)]
    assert answers[::2] == chat.generate_until(_chat_requests(GREEDY))[::2]


def test_region_comes_from_the_alpha_channel(simple: FineCaption):
    docs = _docs()
    texts, images, masks = simple._inputs([r.args for r in _simple_requests(GREEDY)[:2]])
    assert np.array_equal(masks[0], docs[0]["mask"]) and masks[1] is None
    assert all(image.mode == "RGB" for image in images)
    encoded = simple._encode(texts, images, masks)
    reference = simple.processor(
        text=texts, images=[d["image"] for d in docs[:2]], masks=[d["mask"] for d in docs[:2]],
        return_tensors="pt", padding=True,
    )  # fmt: skip
    torch.testing.assert_close(encoded["mask_values"], reference["mask_values"])
    torch.testing.assert_close(encoded["pixel_values"], reference["pixel_values"])
    assert encoded["mask_values"][1].sum() > 2 * encoded["mask_values"][0].sum()  # no alpha: the whole image


def test_stop_strings_cut_the_answer(simple: FineCaption):
    (free,) = simple.generate_until(_simple_requests(GREEDY)[:1])
    stop = free.strip()[2:4]
    (cut,) = simple.generate_until(_simple_requests({**GREEDY, "until": [stop]})[:1])
    assert stop and stop not in cut and free.startswith(cut)


def _broken_visual(doc: dict) -> list[Image.Image]:
    raise OSError("image file is truncated")


def _with_visual(request: Instance, doc_to_visual) -> Instance:
    request.arguments = (*request.arguments[:2], doc_to_visual, *request.arguments[3:])
    return request


def test_a_failing_request_costs_only_its_own_answer(
    simple: FineCaption, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    expected = simple.generate_until(_simple_requests(GREEDY))
    monkeypatch.setattr(simple, "batch_size_per_gpu", 3)
    requests = _simple_requests(GREEDY)
    _with_visual(requests[4], _broken_visual)  # batched with docs 1 and 0 (longest prompts first)
    calls = []
    generate = simple._generate
    monkeypatch.setattr(simple, "_generate", lambda batch, kw: calls.append(len(batch)) or generate(batch, kw))
    answers = simple.generate_until(requests)
    assert answers == [*expected[:4], ""]  # the others, in request order
    assert sorted(calls) == [1, 1, 1, 2, 3]  # the failing batch of 3 retried one request at a time
    assert "task 't' doc 4 failed" in caplog.text and "image file is truncated" in caplog.text
    assert "1 of 5 requests failed" in caplog.text


def test_on_error_raise_ends_the_run(simple: FineCaption, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(simple, "on_error", "raise")
    requests = _simple_requests(GREEDY)
    _with_visual(requests[2], _broken_visual)
    with pytest.raises(OSError, match="image file is truncated"):
        simple.generate_until(requests)


def test_an_alpha_that_is_not_a_mask_means_the_whole_image(simple: FineCaption, caplog: pytest.LogCaptureFixture):
    image = _docs()[1]["image"]  # a doc without region
    transparent = image.convert("RGBA")
    transparent.putalpha(0)
    soft = image.convert("RGBA")
    soft.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, image.width).astype(np.uint8), (image.height, 1))))
    (whole,) = simple.generate_until(_simple_requests(GREEDY)[1:2])
    for visual in (transparent, soft):
        request = _with_visual(_simple_requests(GREEDY)[1], lambda doc, visual=visual: [visual])
        texts, images, masks = simple._inputs([request.args])
        assert masks == [None] and np.array_equal(np.asarray(images[0]), np.asarray(image))
        assert simple.generate_until([request]) == [whole]
    assert "task 't' doc 1: the image's alpha channel is fully transparent" in caplog.text
    assert "neither 0 nor 255; using the whole image" in caplog.text


def test_loglikelihood_matches_token_by_token_scoring(simple: FineCaption):
    metadata = {"task": "t", "doc_id": 0, "repeats": 1}
    ((score, is_greedy),) = simple.loglikelihood(
        [Instance("loglikelihood", (PROMPTS[0], " red car", _visual, 0, "t", "test"), 0, metadata)]
    )
    inputs = simple._encode(*simple._inputs([r.args for r in _simple_requests(GREEDY)[:1]]))
    target = simple.tokenizer(" red car", add_special_tokens=False).input_ids
    expected, greedy = 0.0, True
    with torch.no_grad():
        for token in target:  # one forward pass per token, no shifting of logits
            logits = simple.model(**inputs).logits[0, -1].float()
            expected += torch.log_softmax(logits, -1)[token].item()
            greedy &= logits.argmax().item() == token
            inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([[token]])], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    assert len(target) > 1 and score == pytest.approx(expected, abs=1e-4) and is_greedy == greedy


def test_bad_arguments_are_clear(tiny_checkpoint: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="is not a folder"):
        FineCaption(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="batch_size auto is not supported"):
        FineCaption(pretrained=str(tiny_checkpoint), batch_size="auto")
    with pytest.raises(ValueError, match="dtype='fp8'"):
        FineCaption(pretrained=str(tiny_checkpoint), dtype="fp8")
    with pytest.raises(ValueError, match="on_error='ignore': expected one of skip, raise"):
        FineCaption(pretrained=str(tiny_checkpoint), on_error="ignore")


def test_load_in_4bit_quantises_the_language_model_only(tiny_checkpoint: Path, tmp_path: Path):
    from bitsandbytes.nn import Linear4bit
    from conftest import with_loud_images

    with_loud_images(tiny_checkpoint, tmp_path)  # images that change the answers
    model = FineCaption(pretrained=str(tmp_path), load_in_4bit=True, batch_size=2)
    model.task_dict = {"t": {"test": _docs()}}
    modules = dict(model.model.named_modules())
    assert isinstance(modules["model.language_model.layers.0.self_attn.q_proj"], Linear4bit)
    assert not any(isinstance(m, Linear4bit) for n, m in modules.items() if "vision_tower" in n or "projector" in n)
    assert not isinstance(modules["lm_head"], Linear4bit)
    answers = model.generate_until(_simple_requests(GREEDY))
    assert len(answers) == 5 and all(isinstance(answer, str) for answer in answers) and len(set(answers)) > 1
    alone = [model.generate_until(_simple_requests(GREEDY)[i : i + 1])[0] for i in (0, 3)]
    assert [answers[0], answers[3]] == alone  # each answer is its own request's, batched or not


# -- share_regions: requests of one image answered with shared vision and prefill work --------------------------


def _region_docs() -> list[dict]:
    """Eleven documents on two images: 2 regions per image (one of them the whole image), 2-3 questions each."""
    docs = []
    for index in range(2):
        image = Image.fromarray(np.random.default_rng(10 + index).integers(0, 256, (70, 90 + 10 * index, 3), np.uint8))
        mask = np.zeros((image.height, image.width), bool)
        mask[5 + index : 40, 10:50 + index] = True
        for region, questions in ((mask, PROMPTS[:3]), (None, PROMPTS[3 : 5 - index] + PROMPTS[:1])):
            docs.extend({"prompt": question, "image": image, "mask": region} for question in questions)
    return docs


def _region_requests(docs: list[dict], gen_kwargs: dict) -> list[Instance]:
    return [
        Instance(
            "generate_until",
            (doc["prompt"], dict(gen_kwargs), _visual, index, "r", "test"),
            0,
            {"task": "r", "doc_id": index, "repeats": 1},
        )
        for index, doc in enumerate(docs)
    ]


@pytest.fixture(scope="module")
def regions(tiny_checkpoint: Path) -> FineCaption:
    """A FineCaption whose mask branch and adapters are open (random), so the region changes the answer."""
    model = FineCaption(pretrained=str(tiny_checkpoint), dtype="float32", batch_size="4")
    generator = torch.Generator().manual_seed(0)
    tower = model.model.model.vision_tower
    weights = [tower.fast_mask_embed.weight]
    weights += [w for adapter in tower.adapters for w in (adapter.slow_proj.weight, adapter.fast_proj.weight)]
    with torch.no_grad():
        for weight in weights:
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    model.task_dict = {"r": {"test": _region_docs()}}
    return model


def test_share_regions_answers_as_the_plain_path_with_whole_images_per_batch(
    regions: FineCaption, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    docs = _region_docs()
    assert regions.share_regions  # the default
    batches = []
    generate = regions._generate
    monkeypatch.setattr(
        regions, "_generate", lambda batch, kw: batches.append([a[3] for a in batch]) or generate(batch, kw)
    )
    caplog.set_level("INFO", logger="finecaption_plugin.lmms_eval_model")
    shared = regions.generate_until(_region_requests(docs, GREEDY))
    # Image 0 has docs 0-5, image 1 docs 6-10: batch_size 4 still keeps each image whole.
    assert sorted(sorted(batch) for batch in batches) == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert "11 requests: 2 slow-path images, 4 regions, 4 prefixes encoded" in caplog.text
    monkeypatch.setattr(regions, "share_regions", False)
    plain = regions.generate_until(_region_requests(docs, GREEDY))
    assert shared == plain
    # The region matters: same image and question, other region, other answer; and one by one equals batched.
    assert shared[0] != shared[5] and docs[0]["prompt"] == docs[5]["prompt"]
    monkeypatch.setattr(regions, "batch_size_per_gpu", 1)
    assert [regions.generate_until(_region_requests(docs, GREEDY)[i : i + 1])[0] for i in (0, 7)] == [
        shared[0],
        shared[7],
    ]


def test_share_regions_chat_requests_and_settings_groups(regions: FineCaption, tiny_checkpoint: Path):
    docs = _region_docs()
    chat = FineCaptionChat(pretrained=str(tiny_checkpoint), dtype="float32", batch_size="2")
    chat._model = regions.model
    chat.task_dict = {"r": {"test": docs}}
    metadata = {"task": "r", "doc_id": 0, "repeats": 1}
    requests = [
        Instance("generate_until", (doc["prompt"], _messages, dict(GREEDY), i, "r", "test"), 0, metadata)
        for i, doc in enumerate(docs)
    ]
    for request in requests[1::3]:
        request.arguments[2]["max_new_tokens"] = 3
    answers = chat.generate_until(requests)
    chat.share_regions = False
    assert answers == chat.generate_until(requests)
    assert answers[:1] == regions.generate_until(_region_requests(docs, GREEDY)[:1])


def test_share_regions_keeps_on_error_skip(regions: FineCaption, caplog: pytest.LogCaptureFixture):
    docs = _region_docs()
    expected = regions.generate_until(_region_requests(docs, GREEDY))
    requests = _region_requests(docs, GREEDY)
    _with_visual(requests[2], _broken_visual)
    answers = regions.generate_until(requests)
    assert answers == [*expected[:2], "", *expected[3:]]
    assert "task 'r' doc 2 failed" in caplog.text and "1 of 11 requests failed" in caplog.text


def test_answers_cache_keeps_answers_as_they_are_made_and_resumes(tiny_checkpoint: Path, simple: FineCaption,
                                                                     tmp_path: Path):  # fmt: skip
    """Issue 12: answers persist batch by batch; a run given the same folder generates only what is missing."""
    import json

    expected = simple.generate_until(_simple_requests(GREEDY))

    def model() -> FineCaption:
        cached = FineCaption(pretrained=str(tiny_checkpoint), dtype="float32", batch_size="2",
                             answers_cache=str(tmp_path / "answers"))  # fmt: skip
        cached.task_dict = {"t": {"test": _docs()}}
        generated = []
        generate = cached._generate
        cached._generate = lambda batch, kw: generated.extend(args[-3] for args in batch) or generate(batch, kw)
        return cached, generated

    first, generated = model()
    assert first.generate_until(_simple_requests(GREEDY)) == expected and sorted(generated) == [0, 1, 2, 3, 4]
    (cache_file,) = (tmp_path / "answers").glob("answers-*.jsonl")
    lines = cache_file.read_text().splitlines()
    assert len(lines) == 5
    # A run killed after two answers (and in the middle of writing a third line) left this behind.
    cache_file.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    kept = {json.loads(line)["answer"] for line in lines[:2]}
    resumed, generated = model()
    assert resumed.generate_until(_simple_requests(GREEDY)) == expected
    assert len(generated) == 3 and {expected[i] for i in range(5) if i not in generated} <= kept
    again, generated = model()  # everything is kept now: nothing to generate
    assert again.generate_until(_simple_requests(GREEDY)) == expected and generated == []
    other_settings = FineCaption(pretrained=str(tiny_checkpoint), dtype="float32", max_new_tokens=3,
                                 answers_cache=str(tmp_path / "answers"))  # fmt: skip
    assert other_settings.answers_cache.answers == {}  # answers of other settings are not reused


def test_lmms_eval_baselines_import_beside_the_plugin():
    """Issue 12: lmms-eval's own models import decord even for image tasks; the `baselines` extra brings it."""
    import tomllib
    from lmms_eval.models import get_model

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(requirement.startswith("decord") for requirement in extras["baselines"])
    assert get_model("llava_hf").__name__ == "LlavaHf"
