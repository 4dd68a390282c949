"""``llava.model.builder.load_pretrained_model`` loads FineCaption checkpoints and runs, full or LoRA, 4-bit or not.

Why: LLaVA's loader only knows its own classes (``LlavaLlamaForCausalLM`` and friends, chosen by the words
``llava``/``lora``/``mpt`` in ``model_name``), and on transformers 5 its ``load_in_4bit=True`` /
``load_in_8bit=True`` keyword arguments to ``from_pretrained`` are gone (only ``quantization_config`` remains);
its 4-bit settings would also quantise FineCaption's projector and vision side into packed 4-bit weights. The
wrapper sends a FineCaption checkpoint (``config.json`` with ``model_type`` ``finecaption``), or a LoRA run
on one (``adapter_config.json``; LLaVA's convention of ``lora`` in the folder name is not needed), to
`load_finecaption`; anything else goes to LLaVA's loader unchanged. The result is what LLaVA's callers expect:
``(tokenizer, model, image_processor, context_len)``, the model taking ``generate(input_ids, images=...)``
(``patches/llava/generate.py``) and the image processor giving 4-channel tensors (RGB + the mask from an RGBA
image's alpha channel).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

MARK = "_finecaption_load_pretrained_model"
ADAPTER_CONFIG = "adapter_config.json"
CONTEXT_LEN = 2048  # LLaVA's default when the config names no max_sequence_length


def _model_type(path) -> str | None:
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def lora_base(model_path, model_base) -> str | None:
    """The base checkpoint of a LoRA run: ``model_base``, else the one its adapter records; None for a checkpoint."""
    adapter = Path(model_path) / ADAPTER_CONFIG
    if not adapter.is_file():
        return None
    return model_base or json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")


def is_finecaption(model_path, model_base=None) -> bool:
    """Whether ``model_path`` is a FineCaption checkpoint, or a LoRA run on one."""
    if _model_type(model_path) == "finecaption":
        return True
    base = lora_base(model_path, model_base)
    return base is not None and _model_type(base) == "finecaption"


def load_finecaption(
    model_path,
    model_base=None,
    model_name=None,
    load_8bit=False,
    load_4bit=False,
    device_map="auto",
    device="cuda",
    use_flash_attn=False,
    **kwargs,
):
    """LLaVA's ``load_pretrained_model`` for FineCaption -> ``(tokenizer, model, image_processor, context_len)``.

    float16 unless ``dtype``/``torch_dtype`` is given (as LLaVA); 4/8-bit through ``quantization_config`` with
    the vision side, projector and ``lm_head`` left unquantised (`finecaption_plugin.parts`). A LoRA run is
    loaded on its base and merged, as LLaVA does; on a 4/8-bit base it stays a peft model (merging into packed
    weights would round them). ``model_name`` is not read: a run is recognised by its ``adapter_config.json``.
    """
    import torch
    from transformers import AutoProcessor

    from finecaption_plugin.lora import NON_LORA_FILE, load_non_lora_trainables, quantization_config, saved_modules

    from .generate import LlavaImageProcessor, llava_model_class

    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", torch.float16))
    load_kwargs = {"dtype": dtype, "device_map": {"": device} if device != "cuda" else device_map}
    bits = 4 if load_4bit else 8 if load_8bit else 16
    quantization = quantization_config(bits, "nf4", True, dtype if dtype != "auto" else torch.float16)
    if quantization is not None:
        load_kwargs["quantization_config"] = quantization
    if use_flash_attn:
        load_kwargs["attn_implementation"] = "flash_attention_2"
    load_kwargs.update(kwargs)
    model_class = llava_model_class()
    base = lora_base(model_path, model_base)
    if base is None:
        model = model_class.from_pretrained(model_path, **load_kwargs)
        processor_path = model_path
    else:
        from peft import PeftModel

        if model_base is None:
            warnings.warn(
                f"{model_path} is a LoRA run and no model_base was given: loading it on the base its adapter "
                f"records, {base}",
                stacklevel=3,
            )
        model = model_class.from_pretrained(base, **load_kwargs)
        if not saved_modules(model_path) and (Path(model_path) / NON_LORA_FILE).is_file():
            load_non_lora_trainables(model, Path(model_path) / NON_LORA_FILE)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = PeftModel.from_pretrained(model, model_path)
        if quantization is None:
            model = model.merge_and_unload()
        processor_path = model_path if (Path(model_path) / "processor_config.json").is_file() else base
    model.eval()
    processor = AutoProcessor.from_pretrained(processor_path)
    config = model.config
    # Read by LLaVA's scripts (cli, model_vqa*): FineCaption takes a plain <image> placeholder, and its image
    # processor pads or stretches by itself (process_images must not pad an RGBA image again).
    config.mm_use_im_start_end = False
    config.mm_use_im_patch_token = False
    config.image_aspect_ratio = None
    context_len = getattr(config, "max_sequence_length", None) or CONTEXT_LEN
    return processor.tokenizer, model, LlavaImageProcessor(processor.image_processor), context_len


def patch() -> None:
    """Wrap ``llava.model.builder.load_pretrained_model`` (and the copies LLaVA's modules imported). Idempotent."""
    from llava.model import builder

    original = builder.load_pretrained_model
    if getattr(original, MARK, False):
        return

    @functools.wraps(original)
    def load_pretrained_model(model_path, model_base, model_name, *args, **kwargs):
        if is_finecaption(model_path, model_base):
            return load_finecaption(model_path, model_base, model_name, *args, **kwargs)
        return original(model_path, model_base, model_name, *args, **kwargs)

    setattr(load_pretrained_model, MARK, True)
    builder.load_pretrained_model = load_pretrained_model
    # `from llava.model.builder import load_pretrained_model` in modules imported before apply().
    for name, module in list(sys.modules.items()):
        if name.startswith("llava.") and getattr(module, "load_pretrained_model", None) is original:
            module.load_pretrained_model = load_pretrained_model
