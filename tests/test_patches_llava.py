"""finecaption_plugin.patches.llava: LLaVA's own code (llava-torch 1.2.2.post1) on FineCaption checkpoints.

``llava-torch`` is installed with ``--no-deps`` (its pins would replace this stack) by the ``llava`` fixture: used
as is when the venv has 1.2.2.post1, else installed into a temporary folder put on ``sys.path``; the tests skip
only when the package registry cannot be reached.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from finecaption_plugin.patches import llava as llava_patches
from PIL import Image

REQUIREMENT = f"llava-torch=={llava_patches.SUPPORTED_VERSION}"
UNREACHABLE = ("Could not find a version", "No matching distribution", "Failed to establish", "NewConnectionError",
               "Temporary failure in name resolution", "Network is unreachable", "ProxyError", "timed out")  # fmt: skip


@pytest.fixture(scope="session")
def llava(tmp_path_factory):
    """``llava-torch`` 1.2.2.post1 importable, and the patches applied -> the ``llava`` package."""
    if llava_patches.installed_version() != llava_patches.SUPPORTED_VERSION:
        target = tmp_path_factory.mktemp("llava-torch")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), REQUIREMENT]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            if any(message in result.stderr for message in UNREACHABLE):
                pytest.skip(f"the package registry cannot be reached to install {REQUIREMENT}: {result.stderr[-300:]}")
            raise RuntimeError(f"pip install --no-deps {REQUIREMENT} failed:\n{result.stderr}")
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
    llava_patches.apply()
    import llava

    return llava


def region_image(size=(40, 28)) -> tuple[Image.Image, np.ndarray]:
    """An RGB scene and an RGBA copy whose alpha (255 inside) is a box region -> (rgba, mask)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[5:20, 8:30] = True
    rgba = np.dstack([rgb, np.where(mask, 255, 0).astype(np.uint8)])
    return Image.fromarray(rgba, "RGBA"), mask


def test_apply_is_idempotent_and_llava_train_imports(llava):
    from llava.model import builder

    wrapped = builder.load_pretrained_model
    llava_patches.apply()
    assert builder.load_pretrained_model is wrapped
    # transformers 5 removed ALL_LAYERNORM_LAYERS from transformers.trainer, which llava_trainer imports.
    train = importlib.import_module("llava.train.train")
    assert callable(train.train)


def test_apply_refuses_another_llava_version(monkeypatch):
    monkeypatch.setattr(llava_patches, "installed_version", lambda: "1.1.3")
    with pytest.raises(llava_patches.LlavaVersionError, match=r"llava-torch 1.1.3 is installed.*--no-deps"):
        llava_patches.apply()
    monkeypatch.setattr(llava_patches, "installed_version", lambda: None)
    with pytest.raises(llava_patches.LlavaVersionError, match="not installed"):
        llava_patches.apply()


def test_llava_llama_3_template_renders_the_processors_chat_template(llava, processor):
    from llava.conversation import conv_templates

    conv = conv_templates["llava_llama_3"].copy()
    conv.append_message(conv.roles[0], "<image>\nDescribe the region.")
    conv.append_message(conv.roles[1], None)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the region."}]}]
    expected = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert conv.get_prompt() == expected
    assert conv_templates["llava_llama_3"].messages == []  # copy() leaves the template alone
    assert conv.sep == "<|eot_id|>"


def test_other_checkpoints_still_go_to_llavas_loader(llava, tmp_path):
    from finecaption_plugin.patches.llava.builder import is_finecaption
    from llava.model.builder import load_pretrained_model

    (tmp_path / "config.json").write_text('{"model_type": "llava_llama"}')
    assert not is_finecaption(tmp_path)
    with pytest.raises((OSError, ValueError)):  # LLaVA's own path: no tokenizer in the folder
        load_pretrained_model(str(tmp_path), None, "llava-v1.5-7b", device="cpu")


def llava_cli_generate(llava_module, tokenizer, model, image_processor, image, conv_mode, question, **kwargs):
    """What ``python -m llava.serve.cli`` does for the first turn, without the streamer -> new token ids."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    conv = conv_templates[conv_mode].copy()
    assert not model.config.mm_use_im_start_end
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    image_tensor = process_images([image], image_processor, model.config)
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids, images=image_tensor, image_sizes=[image.size], do_sample=False, max_new_tokens=8,
            use_cache=True, **kwargs,
        )  # fmt: skip
    return prompt, input_ids, output_ids


@pytest.mark.parametrize("conv_mode", ["llava_llama_3", "llava_v1"])
def test_llava_cli_generation_equals_the_processors(llava, tiny_checkpoint, processor, conv_mode):
    from llava.model.builder import load_pretrained_model

    from finecaption_plugin import FineCaptionForConditionalGeneration

    tokenizer, model, image_processor, context_len = load_pretrained_model(
        str(tiny_checkpoint), None, "finecaption-tiny", device="cpu", dtype=torch.float32
    )
    assert context_len == 2048 and isinstance(model, FineCaptionForConditionalGeneration)
    image, mask = region_image()
    prompt, input_ids, llava_ids = llava_cli_generate(
        llava, tokenizer, model, image_processor, image, conv_mode, "Describe the region."
    )
    assert (input_ids == -200).sum() == 1

    reference = FineCaptionForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    inputs = processor(images=[image.convert("RGB")], text=prompt, masks=[mask], return_tensors="pt")
    with torch.inference_mode():
        ours = reference.generate(**inputs, do_sample=False, max_new_tokens=8)
    assert torch.equal(llava_ids, ours[:, inputs["input_ids"].shape[1] :])
    # The mask reached the model: the same image without alpha (the whole image) changes the image features.
    whole = image_processor([image.convert("RGB")], return_tensors="pt")["pixel_values"]
    regional = image_processor([image], return_tensors="pt")["pixel_values"]
    assert whole.shape == regional.shape and whole.shape[:2] == (1, 4)
    assert torch.equal(whole[:, :3], regional[:, :3]) and not torch.equal(whole[:, 3:], regional[:, 3:])
    # An explicit mask argument gives the same as the alpha channel.
    explicit = image_processor([image.convert("RGB")], return_tensors="pt", masks=[mask])["pixel_values"]
    assert torch.equal(explicit, regional)


def lora_run(base: Path, folder: Path) -> Path:
    """A LoRA run as ``finecaption train --lora_enable`` writes it (adapter with modules_to_save, config.json,
    non_lora_trainables.bin), its trained tensors moved at random."""
    from finecaption_plugin import FineCaptionForConditionalGeneration
    from finecaption_plugin.lora import add_lora, save_non_lora_trainables, set_trainable

    model = FineCaptionForConditionalGeneration.from_pretrained(base)
    parts = {"mask", "connector", "projector"}
    model = add_lora(model, SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_bias="none"), parts)
    set_trainable(model, parts, upcast=True)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(folder)
    save_non_lora_trainables(model, folder)
    model.get_base_model().config.save_pretrained(folder)
    return folder


def test_load_pretrained_model_merges_a_lora_run(llava, tiny_checkpoint, tmp_path):
    from llava.model.builder import load_pretrained_model

    from finecaption_plugin.merge import load_pretrained

    run = lora_run(tiny_checkpoint, tmp_path / "finecaption-tiny-lora")
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(run), str(tiny_checkpoint), "finecaption-tiny-lora", device="cpu", dtype=torch.float32
    )
    assert not hasattr(model, "peft_config")  # merged, as LLaVA's loader merges
    reference, _ = load_pretrained(run, tiny_checkpoint, dtype=torch.float32)
    reference = reference.merge_and_unload()
    state = reference.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)
    image, _ = region_image()
    _, _, ids = llava_cli_generate(llava, tokenizer, model, image_processor, image, "llava_llama_3", "Describe it.")
    assert ids.shape[0] == 1 and 0 < ids.shape[1] <= 8


def test_load_4bit_quantises_only_the_language_model_and_generates(llava, tiny_checkpoint, tmp_path):
    import bitsandbytes as bnb
    from llava.model.builder import load_pretrained_model

    run = lora_run(tiny_checkpoint, tmp_path / "finecaption-tiny-lora")
    for path, base in ((tiny_checkpoint, None), (run, tiny_checkpoint)):
        tokenizer, model, image_processor, _ = load_pretrained_model(
            str(path), None if base is None else str(base), path.name, load_4bit=True, device="cpu"
        )
        quantised = {name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
        assert quantised and all("language_model.layers" in name for name in quantised), sorted(quantised)[:5]
        projector = [p for n, p in model.named_parameters() if "multi_modal_projector" in n]
        assert projector and all(p.dtype == torch.float32 for p in projector)  # not packed, kept in fp32
        image, _ = region_image()
        _, _, ids = llava_cli_generate(llava, tokenizer, model, image_processor, image, "llava_llama_3", "Describe.")
        assert ids.shape[0] == 1 and ids.shape[1] > 0


def test_tokenizer_image_token_keeps_the_token_after_image_and_llavas_ids_otherwise(llava):
    from llava import mm_utils
    from tokenizers.processors import TemplateProcessing

    from finecaption_plugin.tiny import build_tiny_tokenizer

    patched = mm_utils.tokenizer_image_token
    original = patched.__wrapped__  # LLaVA's own
    tokenizer = build_tiny_tokenizer()
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    # The LLaMA-3 prompt holds the BOS text and the tokenizer adds none: LLaVA drops the "\n" after <image>.
    prompt = "<|begin_of_text|>user: <image>\nWhat is it? assistant:"
    ids = patched(prompt, tokenizer)
    after = ids[ids.index(-200) + 1 :]
    assert after[: len(newline)] == newline
    assert original(prompt, tokenizer) == ids[: ids.index(-200) + 1] + after[1:]
    # A tokenizer that adds BOS itself (LLaMA-2's, as LLaVA assumes): the same ids as LLaVA's.
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tokenizer.bos_token_id)]
    )
    assert tokenizer("a").input_ids[0] == tokenizer.bos_token_id
    for prompt in ("A chat. USER: <image>\nWhat is it? ASSISTANT:", "<image>\nfirst <image>\nsecond"):
        assert patched(prompt, tokenizer) == original(prompt, tokenizer)
