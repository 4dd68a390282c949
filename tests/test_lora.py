"""finecaption_plugin.lora: LoRA on the language model, the fully trained parts as peft's modules_to_save,
LLaVA's non_lora_trainables.bin export (and import, for runs saved before modules_to_save), and QLoRA: 4-bit
and 8-bit loading on the CPU quantise only the language model, and LoRA trains through it."""

from __future__ import annotations

import re
from types import SimpleNamespace

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.other import ModulesToSaveWrapper
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from finecaption_plugin import FineCaptionConfig, FineCaptionForConditionalGeneration
from finecaption_plugin.lora import (
    LORA_TARGETS,
    NON_LORA_FILE,
    add_lora,
    load_non_lora_trainables,
    non_lora_state_dict,
    save_non_lora_trainables,
    saved_modules,
    set_trainable,
)
from finecaption_plugin.parts import PARTS, modules_to_save

ALL_OPTIONS = {"use_sam_tower": True, "slow_mask_embedding": True}
LORA_PARTS = {"mask", "connector", "projector"}  # what a LoRA run trains fully by default


def lora_args(bias: str = "none") -> SimpleNamespace:
    return SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_bias=bias)


def tiny_model(**overrides) -> FineCaptionForConditionalGeneration:
    torch.manual_seed(0)
    return FineCaptionForConditionalGeneration(FineCaptionConfig.from_preset("tiny", **overrides))


def perturb_trained(model) -> None:
    """Stand-in for training: every trainable tensor moves (lora_B and the zero-init mask conv included)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator).to(param.dtype) * 0.05)


def batch(config):
    input_ids = torch.tensor([[5] + [config.image_token_id] * config.num_image_tokens + [6, 7]])
    generator = torch.Generator().manual_seed(2)
    return {
        "input_ids": input_ids,
        "pixel_values": torch.randn(1, 3, 128, 128, generator=generator),
        "mask_values": (torch.rand(1, 1, 128, 128, generator=generator) > 0.5).float(),
    }


def test_lora_targets_and_modules_to_save_never_overlap():
    model = tiny_model(**ALL_OPTIONS)
    lora_modules = {name for name, _ in model.named_modules() if re.fullmatch(LORA_TARGETS, name)}
    assert len(lora_modules) == 2 * 7
    saved = modules_to_save(model, set(PARTS) - {"language"})  # the most a LoRA run can train fully
    for target in lora_modules:
        assert not any(target == name or target.startswith(name + ".") for name in saved), target
    # Nor does peft's suffix matching of modules_to_save catch anything beyond the listed modules.
    peft_model = add_lora(model, lora_args(), set(PARTS) - {"language"})
    wrapped = {name for name, module in peft_model.named_modules() if isinstance(module, ModulesToSaveWrapper)}
    assert wrapped == {"base_model.model." + name for name in saved}
    assert not any(".lora_" in name and ".modules_to_save." in name for name, _ in peft_model.named_parameters())


def test_add_lora_trains_the_parts_as_modules_to_save():
    model = add_lora(tiny_model(), lora_args(), LORA_PARTS)
    assert set(model.peft_config["default"].modules_to_save) == set(modules_to_save(model.get_base_model(), LORA_PARTS))
    counts = set_trainable(model, LORA_PARTS, upcast=True)
    assert counts["lora"] > 0 and all(counts[part] > 0 for part in LORA_PARTS)
    assert counts["vision"] == counts["language"] == 0
    for name, param in model.named_parameters():
        trained = ".lora_" in name or ".modules_to_save.default." in name
        assert param.requires_grad == trained, name
    tower = model.get_base_model().model.vision_tower
    assert isinstance(tower.fast_mask_embed, ModulesToSaveWrapper)
    assert isinstance(tower.adapters[0], ModulesToSaveWrapper) and isinstance(tower.fusion, ModulesToSaveWrapper)
    # Attribute access (the tower reads fast_mask_embed.weight.dtype) reaches the trained copy.
    assert tower.fast_mask_embed.weight is tower.fast_mask_embed.modules_to_save["default"].weight


def test_forward_uses_the_trained_copies_and_backward_reaches_them():
    config = FineCaptionConfig.from_preset("tiny")
    model = add_lora(tiny_model(), lora_args(), LORA_PARTS)
    set_trainable(model, LORA_PARTS, upcast=True)
    inputs = batch(config)
    with torch.no_grad():
        before = model(**inputs).logits
        model.get_base_model().model.vision_tower.fast_mask_embed.modules_to_save["default"].weight.fill_(0.1)
        after = model(**inputs).logits
        with model.disable_adapter():  # the frozen originals: the base model's output
            base = model(**inputs).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(base, before)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad and ("fast_mask_embed" in name or "multi_modal_projector" in name):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        if ".original_module." in name:
            assert param.grad is None, name


def test_adapter_holds_the_parts_and_from_pretrained_restores_them(tmp_path):
    model = add_lora(tiny_model(), lora_args(), LORA_PARTS)
    set_trainable(model, LORA_PARTS, upcast=True)
    perturb_trained(model)
    model.save_pretrained(tmp_path)
    assert set(saved_modules(tmp_path)) == set(modules_to_save(model.get_base_model(), LORA_PARTS))
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    # peft saves the trained copies under the names LLaVA's file uses.
    export = non_lora_state_dict(model)
    assert set(export) <= set(adapter)
    for key, value in export.items():
        torch.testing.assert_close(adapter[key], value, rtol=0, atol=0)

    reloaded = PeftModel.from_pretrained(tiny_model(), tmp_path)
    trained = dict(model.named_parameters())
    for name, param in reloaded.named_parameters():
        torch.testing.assert_close(param, trained[name], rtol=0, atol=0, msg=name)
    assert saved_modules(tmp_path / "missing") == []


def test_non_lora_export_has_llava_keys_and_no_frozen_originals(tmp_path):
    model = add_lora(tiny_model(), lora_args(), LORA_PARTS)
    set_trainable(model, LORA_PARTS, upcast=True)
    perturb_trained(model)
    save_non_lora_trainables(model, tmp_path)
    saved = torch.load(tmp_path / NON_LORA_FILE, weights_only=True)
    assert "base_model.model.model.vision_tower.fast_mask_embed.weight" in saved
    assert "base_model.model.model.vision_tower.adapters.2.gate.0.weight" in saved
    assert "base_model.model.model.multi_modal_projector.linear_2.bias" in saved
    assert not any("lora_" in key or "modules_to_save" in key or "original_module" in key for key in saved)
    copy = model.get_base_model().model.vision_tower.fast_mask_embed.modules_to_save["default"].weight
    torch.testing.assert_close(saved["base_model.model.model.vision_tower.fast_mask_embed.weight"], copy)
    assert saved["base_model.model.model.vision_tower.fast_mask_embed.weight"].abs().sum() > 0
    save_non_lora_trainables(model, tmp_path / "other-rank", write=False)  # gathers, writes nothing
    assert not (tmp_path / "other-rank").exists()


def test_old_non_lora_file_loads_into_the_trained_copies(tmp_path):
    """Resuming a checkpoint saved before modules_to_save: LLaVA's file fills the copies peft trains."""
    old = add_lora(tiny_model(), lora_args())  # the old layout: LoRA only, the parts trained in place
    set_trainable(old, LORA_PARTS, upcast=True)
    perturb_trained(old)
    old_state = {name: param.detach().clone() for name, param in old.named_parameters() if param.requires_grad}
    torch.save({k: v for k, v in old_state.items() if "lora_" not in k}, tmp_path / NON_LORA_FILE)

    new = add_lora(tiny_model(), lora_args(), LORA_PARTS)
    assert load_non_lora_trainables(new, tmp_path / NON_LORA_FILE) == len(non_lora_state_dict(new))
    for key, value in non_lora_state_dict(new).items():
        torch.testing.assert_close(value, old_state[key], rtol=0, atol=0)
    original = new.get_base_model().model.vision_tower.fast_mask_embed.original_module.weight
    assert original.abs().sum() == 0  # the frozen original keeps the base weights

    bad = {"base_model.model.model.vision_tower.no_such.weight": torch.zeros(1)}
    torch.save(bad, tmp_path / "bad.bin")
    with pytest.raises(KeyError, match="not a parameter"):
        load_non_lora_trainables(new, tmp_path / "bad.bin")


@pytest.mark.parametrize("lora_bias", ["all", "lora_only"])
def test_lora_bias_with_modules_to_save(lora_bias):
    config = FineCaptionConfig.from_preset("tiny", text_config={"attention_bias": True})
    model = add_lora(FineCaptionForConditionalGeneration(config), lora_args(lora_bias), LORA_PARTS)
    counts = set_trainable(model, LORA_PARTS, upcast=True)
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    assert not any(".original_module." in name for name in trained)
    assert counts["vision"] == counts["language"] == 0 and counts["projector"] > 0
    biases = {name for name in trained if name.endswith(".bias") and ".modules_to_save." not in name}
    assert any("base_layer" in name and ".language_model.layers." in name for name in biases)
    if lora_bias == "all":  # peft's "all": every bias, frozen towers' included (as in LLaVA)
        assert any(".fast_tower." in name for name in biases)
    else:
        assert all(".language_model.layers." in name for name in biases)
    export = non_lora_state_dict(model)
    assert "base_model.model.model.multi_modal_projector.linear_1.bias" in export
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.bias" in export


def test_qlora_keeps_the_modules_to_save_unquantised_and_trains_them(tiny_checkpoint):
    import bitsandbytes as bnb

    from finecaption_plugin.lora import quantization_config

    model = FineCaptionForConditionalGeneration.from_pretrained(
        tiny_checkpoint, quantization_config=quantization_config(4, "nf4", True, torch.float32)
    )
    model = add_lora(model, lora_args(), LORA_PARTS)
    set_trainable(model, LORA_PARTS, upcast=True)
    modules = dict(model.named_modules())
    assert isinstance(
        modules["base_model.model.model.language_model.layers.0.self_attn.q_proj"].base_layer, bnb.nn.Linear4bit
    )
    for name, module in modules.items():
        if ".modules_to_save.default" in name and isinstance(module, torch.nn.Linear):
            assert type(module) is torch.nn.Linear and module.weight.dtype == torch.float32, name
    inputs = batch(model.get_base_model().config)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    projector = modules["base_model.model.model.multi_modal_projector"].modules_to_save["default"]
    mask_conv = modules["base_model.model.model.vision_tower.fast_mask_embed"].modules_to_save["default"]
    for param in (projector.linear_2.weight, mask_conv.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_zero3_counts_partitioned_parameters_by_ds_numel():
    model = add_lora(tiny_model(), lora_args(), LORA_PARTS)
    expected = set_trainable(model, LORA_PARTS, upcast=False)
    for param in model.parameters():  # what ZeRO-3 leaves on a rank: no elements, the full count in ds_numel
        param.ds_numel = param.numel()
        param.data = torch.empty(0, dtype=param.dtype)
    assert set_trainable(model, LORA_PARTS, upcast=False) == expected


def test_vision_towers_as_modules_to_save_run_and_every_trained_parameter_gets_a_gradient():
    """LoRA with --freeze_vision False (or --full_finetune): whole towers become trained copies; the tower's
    calls into them (fast_tower.embed, fast_tower.encoder.layers) reach the copies."""
    config = FineCaptionConfig.from_preset("tiny", **ALL_OPTIONS)
    base = tiny_model(**ALL_OPTIONS).train()
    parts = set(PARTS) - {"language"}
    inputs = batch(config)
    with torch.no_grad():
        expected = base(**inputs).logits
    model = add_lora(base, lora_args(), parts)
    counts = set_trainable(model, parts, upcast=True)
    assert counts["vision"] > 0
    tower = model.get_base_model().model.vision_tower
    assert all(isinstance(m, ModulesToSaveWrapper) for m in (tower.fast_tower, tower.slow_tower, tower.sam_tower))
    output = model(**inputs, labels=inputs["input_ids"])
    torch.testing.assert_close(output.logits, expected)  # zero lora_B, copies equal to the originals
    output.loss.backward()
    missing = [name for name, param in model.named_parameters() if param.requires_grad and param.grad is None]
    assert missing == []
    copy = tower.fast_tower.modules_to_save["default"].encoder.layers[0].self_attn.q_proj.weight
    assert copy.grad.abs().sum() > 0
    assert tower.fast_tower.original_module.encoder.layers[0].self_attn.q_proj.weight.grad is None


def test_4bit_load_quantises_only_the_language_model_and_lora_backward_runs(tiny_checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(
        tiny_checkpoint, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    )
    quantised = {name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    language_linears = {
        name for name, module in model.model.language_model.named_modules(prefix="model.language_model")
        if isinstance(module, torch.nn.Linear)
    }
    assert quantised and quantised == language_linears
    for prefix in ("model.vision_tower", "model.multi_modal_projector", "lm_head"):
        kept = [name for name, module in model.named_modules() if name.startswith(prefix)]
        assert kept and not any(name in quantised for name in kept), prefix
    assert model.model.vision_tower.fast_mask_embed.weight.dtype == torch.float32
    assert model.model.vision_tower.adapters[0].gate[0].weight.dtype == torch.float32

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    lora_names = [name for name, _ in model.named_parameters() if "lora_" in name]
    assert lora_names and all(".language_model." in name for name in lora_names)

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    inputs = processor(text=["<|begin_of_text|><image>\nDescribe. a red car"], images=[image], return_tensors="pt")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert torch.isfinite(loss) and grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_train_loader_8bit_quantises_only_the_language_model_and_lora_backward_runs(tiny_checkpoint):
    from types import SimpleNamespace

    from finecaption_plugin.lora import add_lora, set_trainable
    from finecaption_plugin.train import load_model

    flags = SimpleNamespace(
        bits=8, quant_type="nf4", double_quant=True, bf16=False, fp16=False, device=torch.device("cpu"),
        cache_dir=None, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_bias="none",
    )  # fmt: skip
    model = load_model(SimpleNamespace(model_name_or_path=str(tiny_checkpoint)), flags)
    quantised = {name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear8bitLt)}
    assert quantised and all(name.startswith("model.language_model.layers.") for name in quantised)
    model = add_lora(model, flags)
    set_trainable(model, {"mask", "projector"}, upcast=True)
    input_ids = torch.tensor([[1, 5, 9, 12, 7]])
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert torch.isfinite(loss) and grads and any(g.abs().sum() > 0 for g in grads)
