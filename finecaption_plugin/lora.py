"""What trains in each stage, LoRA/QLoRA set-up, and LLaVA's ``non_lora_trainables.bin``.

Parameters fall in parts by name: the mask branch (every name with "mask"), the MR-adapters and fusion
("connector"), the projector, the vision towers, and the language model (``lm_head`` included). LoRA
goes on the language model's attention and MLP projections only (a regex on its path, so CLIP's own
``q_proj``/``k_proj``/``v_proj`` are never caught); the other trained parts train fully and are saved
beside the adapter in ``non_lora_trainables.bin`` under LLaVA's key names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

NON_LORA_FILE = "non_lora_trainables.bin"
LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
# llm_int8_skip_modules replaces bitsandbytes' default list, so lm_head is named here too.
QUANT_SKIP_MODULES = ["vision_tower", "multi_modal_projector", "lm_head"]
PEFT_PREFIX = "base_model.model."

PARTS = ("mask", "connector", "projector", "vision", "language")


def part_of(name: str) -> str:
    """The part a parameter of `FineCaptionForConditionalGeneration` belongs to, from its name."""
    if "mask" in name:
        return "mask"
    if ".vision_tower.adapters." in name or ".vision_tower.fusion." in name:
        return "connector"
    if "multi_modal_projector" in name:
        return "projector"
    if ".vision_tower." in name:
        return "vision"
    return "language"


def trained_parts(model_args, training_args) -> set[str]:
    """The parts trained fully (not through LoRA) for the stage the flags choose."""
    if model_args.tune_mm_mlp_adapter:
        parts = {"projector", "connector"}
    elif model_args.tune_mask_branch:
        parts = {"mask"}
    elif model_args.full_finetune:
        parts = set(PARTS)
    else:
        parts = {"mask", "connector", "projector"}
        if not model_args.freeze_vision:
            parts.add("vision")
        if not model_args.freeze_backbone:
            parts.add("language")
    if training_args.lora_enable:
        if model_args.tune_mm_mlp_adapter or model_args.tune_mask_branch:
            raise ValueError("--lora_enable trains the language model; stages 1 and 2 keep it frozen")
        parts.discard("language")  # trained through the LoRA adapters instead
    if training_args.freeze_mm_mlp_adapter:
        parts.discard("projector")
    return parts


def quantization_config(bits: int, quant_type: str, double_quant: bool, compute_dtype: torch.dtype):
    """bitsandbytes settings for `--bits 4|8` (None for 16): the vision side and lm_head stay unquantised."""
    if bits == 16:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=bits == 4,
        load_in_8bit=bits == 8,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        llm_int8_skip_modules=QUANT_SKIP_MODULES,
    )


def add_lora(model: nn.Module, training_args) -> nn.Module:
    """Wrap `model` in a peft `PeftModel` with LoRA on the language model's projections."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def set_trainable(model: nn.Module, parts: set[str], upcast: bool) -> dict[str, int]:
    """Freeze every parameter outside ``parts`` (what peft trains stays trainable) -> trained counts per part.

    With ``upcast``, trained parameters are kept in float32 (the optimizer's master copy); frozen ones keep
    the load dtype. DeepSpeed manages dtypes itself, so it runs without upcast.
    """
    counts = dict.fromkeys((*PARTS, "lora"), 0)
    is_peft = hasattr(model, "peft_config")
    for name, param in model.named_parameters():
        # peft leaves trainable its LoRA weights and, with --lora_bias all|lora_only, the biases it chose.
        if "lora_" in name or (is_peft and param.requires_grad and name.endswith(".bias")):
            part, train = "lora", True
        else:
            part = part_of(name)
            train = part in parts and param.dtype.is_floating_point
        param.requires_grad_(train)
        if train:
            counts[part] += getattr(param, "ds_numel", param.numel())  # ZeRO-3 leaves 0 elements per rank
            if upcast and param.dtype != torch.float32:
                param.data = param.data.float()
    if not any(counts.values()):
        raise ValueError("these flags leave no parameter to train")
    return counts


def _gathered(param: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of ``param``, gathering it first when DeepSpeed ZeRO-3 has partitioned it."""
    if hasattr(param, "ds_id"):
        from deepspeed import zero

        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def non_lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trained parameters that are not LoRA weights, under the PeftModel's names (LLaVA's file layout)."""
    return {
        name: _gathered(param)
        for name, param in model.named_parameters()
        if param.requires_grad and "lora_" not in name
    }


def save_non_lora_trainables(model: nn.Module, output_dir: str | Path, write: bool = True) -> None:
    """Write ``non_lora_trainables.bin`` into ``output_dir``; every rank gathers, only ``write`` ones save."""
    state = non_lora_state_dict(model)
    if write:
        torch.save(state, Path(output_dir) / NON_LORA_FILE)


def load_non_lora_trainables(model: nn.Module, path: str | Path) -> int:
    """Load a ``non_lora_trainables.bin`` into ``model`` (a PeftModel or the bare model) -> tensors loaded.

    Keys are matched after removing the PeftModel prefix, as LLaVA's loader does; an unknown key or a
    shape mismatch is an error.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = dict(target.named_parameters())
    for key, value in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name not in params:
            raise KeyError(f"{path}: {key!r} is not a parameter of the model")
        if params[name].shape != value.shape:
            raise ValueError(
                f"{path}: {key!r} has shape {tuple(value.shape)}, the model's is {tuple(params[name].shape)}"
            )
        with torch.no_grad():
            params[name].copy_(value)
    logger.info("loaded %d non-LoRA tensors from %s", len(state), path)
    return len(state)
