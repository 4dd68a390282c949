"""Loading training runs, and ``finecaption merge``: a LoRA run folded into a plain checkpoint.

``finecaption merge --model-path RUN --model-base BASE --save-model-path OUT`` takes LLaVA's
``scripts/merge_lora_weights.py`` flags: the base model, then the run's adapter (its LoRA layers and, as peft's
``modules_to_save``, the fully trained parts), merged into the weights by peft. A run saved before
``modules_to_save`` gets its fully trained parts from ``non_lora_trainables.bin`` first, as LLaVA's loader does.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def _processor_folder(model_path: Path, base: str | Path) -> Path:
    return model_path if (model_path / "processor_config.json").is_file() else Path(base)


def load_pretrained(model_path: str | Path, model_base: str | Path | None = None, dtype="auto"):
    """A checkpoint or a training run (full or LoRA) -> ``(model, processor)``.

    A LoRA run (a folder with ``adapter_config.json``) is loaded on ``model_base`` (default: the base it
    was trained from) as a peft ``PeftModel``: the adapter holds the LoRA weights and, as ``modules_to_save``,
    the fully trained parts. A run saved before ``modules_to_save`` has those only in its
    ``non_lora_trainables.bin``, which is then loaded into the base first (as LLaVA's loader does).
    """
    from peft import PeftModel
    from transformers import AutoProcessor

    from finecaption_plugin import FineCaptionForConditionalGeneration
    from finecaption_plugin.lora import NON_LORA_FILE, load_non_lora_trainables, saved_modules

    model_path = Path(model_path)
    adapter_config = model_path / ADAPTER_CONFIG
    if not adapter_config.is_file():
        model = FineCaptionForConditionalGeneration.from_pretrained(model_path, dtype=dtype)
        return model, AutoProcessor.from_pretrained(model_path)
    base = model_base or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{model_path} is a LoRA run without a recorded base model: pass --model-base")
    model = FineCaptionForConditionalGeneration.from_pretrained(base, dtype=dtype)
    if not saved_modules(model_path) and (model_path / NON_LORA_FILE).is_file():
        load_non_lora_trainables(model, model_path / NON_LORA_FILE)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` alias, which warns on every load.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = PeftModel.from_pretrained(model, model_path)
    return model, AutoProcessor.from_pretrained(_processor_folder(model_path, base))


def merge_lora(model_path: str | Path, model_base: str | Path | None, save_model_path: str | Path) -> Path:
    """Write the merged plain checkpoint (model and processor) of LoRA run ``model_path`` to ``save_model_path``."""
    model_path = Path(model_path)
    if not (model_path / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{model_path} has no {ADAPTER_CONFIG}: not a LoRA run")
    model, processor = load_pretrained(model_path, model_base)
    merged = model.merge_and_unload()
    merged.save_pretrained(save_model_path)
    processor.save_pretrained(save_model_path)
    logger.info("merged %s into %s", model_path, save_model_path)
    return Path(save_model_path)
