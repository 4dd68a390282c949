"""finecaption_plugin.patches.llava: LLaVA's own code (llava-torch 1.2.2.post1) on FineCaption checkpoints.

``llava-torch`` is installed with ``--no-deps`` (its pins would replace this stack) by the ``llava`` fixture: used
as is when the venv has 1.2.2.post1, else installed into a temporary folder put on ``sys.path``; the tests skip
only when the package registry cannot be reached.
"""

from __future__ import annotations

import importlib
import json
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


def llava_train(argv: list[str], monkeypatch) -> list[float]:
    """LLaVA's own ``llava.train.train.train()`` with ``argv`` -> the logged losses (from trainer_state.json)."""
    from llava.train import train as llava_train_module

    original_class = llava_train_module.LlavaLlamaForCausalLM
    monkeypatch.setattr(sys, "argv", ["llava/train/train_mem.py", *argv])
    llava_train_module.train()
    assert llava_train_module.LlavaLlamaForCausalLM is original_class  # LLaVA's own pieces are back
    output = Path(argv[argv.index("--output_dir") + 1])
    state = json.loads((output / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    from test_train import write_dataset  # LLaVA records with masks in four formats

    return write_dataset(tmp_path_factory.mktemp("llava-data"))


def llava_argv(checkpoint: Path, data: Path, output: Path, *extra: str) -> list[str]:
    """LLaVA's LoRA flags on the tiny model (CPU, float32): `finecaption train`'s test run, LLaVA's spelling."""
    from test_train import run_args

    llava_flags = ["--vision_tower", "openai/clip-vit-large-patch14-336", "--mm_projector_type", "mlp2x_gelu",
                   "--evaluation_strategy", "no", "--lazy_preprocess", "True"]  # fmt: skip
    return [*run_args(checkpoint, data, output, *extra), *llava_flags]


@pytest.mark.e2e
@pytest.mark.parametrize("bits", ["16", "4"])
def test_llavas_train_runs_lora_and_qlora_with_masks_then_loads_and_generates(
    llava, tiny_checkpoint, train_data, tmp_path, monkeypatch, bits
):
    import bitsandbytes as bnb
    from llava.model.builder import load_pretrained_model

    output = tmp_path / f"finecaption-tiny-{'q' if bits == '4' else ''}lora"
    # QLoRA in bf16 runs LLaVA's casts of LoRA layers, "norm" modules and lm_head (bits 4 and bf16 only).
    extra = ("--bf16", "True") if bits == "4" else ()
    argv = llava_argv(tiny_checkpoint, train_data, output, "--bits", bits, "--max_steps", "4", *extra)
    losses = llava_train(argv, monkeypatch)
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    # LLaVA's layout, written by LLaVA's code: adapter, config.json, non_lora_trainables.bin.
    for name in ("adapter_model.safetensors", "adapter_config.json", "config.json", "non_lora_trainables.bin"):
        assert (output / name).is_file(), name
    non_lora = torch.load(output / "non_lora_trainables.bin", weights_only=True)
    projector = {k: v for k, v in non_lora.items() if "multi_modal_projector" in k}
    # the projector trained in float32, never packed into 4-bit weights (nor cast by LLaVA's QLoRA code)
    assert projector and all(v.dtype == torch.float32 and v.dim() in (1, 2) for v in projector.values())
    assert any("fast_mask_embed" in k for k in non_lora)  # the mask branch trained too
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert not any("vision_tower" in target for target in str(adapter["target_modules"]).split("|"))

    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(output), str(tiny_checkpoint), output.name, load_4bit=bits == "4", device="cpu", dtype=torch.float32
    )
    if bits == "4":
        assert any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())
    trained = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = next(k for k in projector if k.endswith("linear_1.weight"))
    torch.testing.assert_close(trained.model.multi_modal_projector.linear_1.weight.float(), projector[key])
    image, _ = region_image()
    _, _, ids = llava_cli_generate(llava, tokenizer, model, image_processor, image, "llama3", "Describe it.")
    assert ids.shape[0] == 1 and ids.shape[1] > 0


@pytest.mark.e2e
def test_llavas_first_step_loss_equals_finecaption_trains(llava, tiny_checkpoint, train_data, tmp_path, monkeypatch):
    from finecaption_plugin.train import parse_args, train

    ours = train(*parse_args(run_args_for(tiny_checkpoint, train_data, tmp_path / "ours")))
    our_losses = [entry["loss"] for entry in ours.state.log_history if "loss" in entry]
    theirs = llava_train(llava_argv(tiny_checkpoint, train_data, tmp_path / "theirs-lora", "--max_steps", "2"),
                         monkeypatch)  # fmt: skip
    # Same records, template (llama3), labels (assistant turns only), seed and LoRA initialisation.
    assert abs(theirs[0] - our_losses[0]) < 1e-3, (theirs, our_losses)


def run_args_for(checkpoint: Path, data: Path, output: Path) -> list[str]:
    from test_train import run_args

    return run_args(checkpoint, data, output, "--max_steps", "2")


@pytest.mark.e2e
def test_finecaption_llava_train_full_finetune_saves_a_checkpoint_llava_loads(
    llava, tiny_checkpoint, train_data, tmp_path, monkeypatch
):
    from finecaption_plugin.patches.llava.train import main
    from llava.model.builder import load_pretrained_model

    output = tmp_path / "finecaption-tiny-full"
    argv = [arg for arg in llava_argv(tiny_checkpoint, train_data, output, "--max_steps", "2")]
    argv[argv.index("--lora_enable") + 1] = "False"
    argv += ["--full_finetune", "True"]
    monkeypatch.setattr(sys, "argv", ["finecaption-llava-train"])
    assert main(argv) == 0
    assert (output / "config.json").is_file() and (output / "model.safetensors").is_file()
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(output), None, output.name, device="cpu", dtype=torch.float32
    )
    image, _ = region_image()
    _, _, ids = llava_cli_generate(llava, tokenizer, model, image_processor, image, "llama3", "Describe it.")
    assert ids.shape[1] > 0
