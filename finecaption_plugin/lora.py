"""What trains in each stage, LoRA/QLoRA set-up, and LLaVA's ``non_lora_trainables.bin``.

Parameters fall in parts (`finecaption_plugin.parts`): the mask branch, the MR-adapters and fusion
("connector"), the projector, the vision towers, and the language model (``lm_head`` included). LoRA goes
on the language model's attention and MLP projections only (a regex on its path, so CLIP's own
``q_proj``/``k_proj``/``v_proj`` are never caught). The other trained parts train fully as peft's
``modules_to_save``: peft saves them inside the adapter, restores them in ``PeftModel.from_pretrained`` and
on resume, and merges them. ``non_lora_trainables.bin`` is written beside the adapter as LLaVA's export,
under LLaVA's key names (the PeftModel's parameter names, without peft's ``modules_to_save.default``); runs
saved before ``modules_to_save`` keep their fully trained parts only there, and still load.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from finecaption_plugin.parts import (
    PARTS,
    PEFT_PREFIX,
    canonical_name,
    is_copy,
    modules_to_save,
    part_of,
    quant_skip_modules,
    trained_parts,
    unwrapped_name,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_TARGETS",
    "NON_LORA_FILE",
    "PARTS",
    "PEFT_PREFIX",
    "QUANT_SKIP_MODULES",
    "add_lora",
    "saved_modules",
    "load_non_lora_trainables",
    "non_lora_state_dict",
    "part_of",
    "quantization_config",
    "save_non_lora_trainables",
    "set_trainable",
    "trained_parts",
]

NON_LORA_FILE = "non_lora_trainables.bin"
LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
# llm_int8_skip_modules replaces bitsandbytes' default list, so lm_head is in it too (see parts.COMPONENTS).
QUANT_SKIP_MODULES = quant_skip_modules()
# peft's frozen original of a module it trains as modules_to_save.
ORIGINAL_MODULE = ".original_module."


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


def add_lora(model: nn.Module, training_args, parts: set[str] | frozenset[str] = frozenset()) -> nn.Module:
    """Wrap `model` in a peft `PeftModel`: LoRA on the language model's projections, ``parts`` fully trained.

    The modules of ``parts`` (see `finecaption_plugin.parts.modules_to_save`) become peft's ``modules_to_save``:
    peft trains a copy of each, saves it in the adapter and restores it with the adapter.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        target_modules=LORA_TARGETS,
        modules_to_save=modules_to_save(model, parts) or None,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` alias, which warns on every run.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)


def set_trainable(model: nn.Module, parts: set[str], upcast: bool) -> dict[str, int]:
    """Freeze every parameter outside ``parts`` (what peft trains stays trainable) -> trained counts per part.

    Of a module peft trains as ``modules_to_save``, the trained copy counts in its part and the original
    stays frozen. With ``upcast``, trained parameters are kept in float32 (the optimizer's master copy);
    frozen ones keep the load dtype. DeepSpeed manages dtypes itself, so it runs without upcast.
    """
    counts = dict.fromkeys((*PARTS, "lora"), 0)
    is_peft = hasattr(model, "peft_config")
    for name, param in model.named_parameters():
        if ORIGINAL_MODULE in name:
            part, train = part_of(name), False
        # peft leaves trainable its LoRA weights and, with --lora_bias all|lora_only, the biases it chose.
        elif "lora_" in name or (is_peft and param.requires_grad and name.endswith(".bias") and not is_copy(name)):
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


def saved_modules(folder: str | Path) -> list[str]:
    """The ``modules_to_save`` recorded in the adapter of a LoRA run or checkpoint (empty: saved before them)."""
    import json

    from peft.utils import CONFIG_NAME  # adapter_config.json

    config = Path(folder) / CONFIG_NAME
    return list(json.loads(config.read_text()).get("modules_to_save") or []) if config.is_file() else []


def _gathered(param: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of ``param``, gathering it first when DeepSpeed ZeRO-3 has partitioned it."""
    if hasattr(param, "ds_id"):
        from deepspeed import zero

        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def non_lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trained parameters that are not LoRA weights, under the PeftModel's names (LLaVA's file layout).

    peft's trained copies are written under the name of the module they replace (no ``modules_to_save.default``).
    """
    return {
        unwrapped_name(name): _gathered(param)
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

    Keys are matched after removing the PeftModel prefix, as LLaVA's loader does; a module peft trains as
    ``modules_to_save`` receives the tensor in its trained copy (resuming a checkpoint saved before
    ``modules_to_save``); LoRA-wrapped biases (``--lora_bias``) load into the bare model's layer. An unknown key
    or a shape mismatch is an error.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = {
        canonical_name(name): param for name, param in target.named_parameters() if ORIGINAL_MODULE not in name
    }
    for key, value in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name not in params and ".base_layer." in name:
            name = name.replace(".base_layer.", ".")
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
