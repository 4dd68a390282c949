"""QLoRA smoke test: 4-bit loading on the CPU quantises only the language model, and LoRA trains through it."""

from __future__ import annotations

import bitsandbytes as bnb
import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

import finecaption_plugin  # noqa: F401
from finecaption_plugin.lora import LORA_TARGETS


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
