"""finecaption_plugin.parts: one table of the model's parts, and every list derived from it (info's components,
the training parts and stages, what bitsandbytes leaves unquantised, what float16 loading keeps in fp32)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from transformers.core_model_loading import build_glob_alternation
from transformers.quantizers.quantizers_utils import should_convert_module

from finecaption_plugin import FineCaptionConfig
from finecaption_plugin.modeling_finecaption import FineCaptionForConditionalGeneration, FineCaptionModel
from finecaption_plugin.parts import (
    COMPONENTS,
    PARTS,
    PARTS_TABLE,
    canonical_name,
    component_of,
    keep_in_fp32_modules,
    modules_to_save,
    part_of,
    quant_skip_modules,
    trained_parts,
)

ALL_OPTIONS = {"use_sam_tower": True, "slow_mask_embedding": True}
# The lists the package had before parts.py (modeling_finecaption._keep_in_fp32_modules, lora.QUANT_SKIP_MODULES).
OLD_KEEP_IN_FP32 = [r".*vision_tower", r".*multi_modal_projector"]
OLD_QUANT_SKIP = ["vision_tower", "multi_modal_projector", "lm_head"]


def meta_model(cls=FineCaptionForConditionalGeneration, preset: str = "tiny", **overrides):
    with torch.device("meta"):
        return cls(FineCaptionConfig.from_preset(preset, **overrides))


def old_part_of(name: str) -> str:
    """lora.part_of as it was: rules on substrings of the name."""
    if "mask" in name:
        return "mask"
    if ".vision_tower.adapters." in name or ".vision_tower.fusion." in name:
        return "connector"
    if "multi_modal_projector" in name:
        return "projector"
    if ".vision_tower." in name:
        return "vision"
    return "language"


def old_trained_parts(model_args, training_args) -> set[str]:
    """lora.trained_parts as it was: one branch per stage."""
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
        parts.discard("language")
    if training_args.freeze_mm_mlp_adapter:
        parts.discard("projector")
    return parts


@pytest.mark.parametrize("preset", ["tiny", "finecaption-paper"])
def test_every_parameter_and_buffer_is_in_exactly_one_component(preset):
    model = meta_model(preset=preset, **ALL_OPTIONS)
    names = list(model.state_dict())
    assert names
    for name in names:
        owners = [c for c in COMPONENTS for p in c.prefixes if name.startswith(p + ".")]
        assert len(owners) == 1, (name, owners)
        assert component_of(name) is owners[0]
    assert {c.part for c in COMPONENTS} == set(PARTS) == {p.name for p in PARTS_TABLE}
    assert len({c.name for c in COMPONENTS}) == len(COMPONENTS)
    with pytest.raises(KeyError, match="no component"):
        component_of("model.something_new.weight")


def test_part_of_gives_the_old_parts_for_plain_and_peft_names():
    model = meta_model(**ALL_OPTIONS)
    for name, _ in model.named_parameters():
        assert part_of(name) == old_part_of(name), name
        module, leaf = name.rsplit(".", 1)
        for peft_name in (f"base_model.model.{name}", f"base_model.model.{module}.modules_to_save.default.{leaf}"):
            assert part_of(peft_name) == old_part_of(name), peft_name
            assert canonical_name(peft_name) == name
    copy = "base_model.model.model.vision_tower.adapters.1.modules_to_save.default.gate.0.weight"
    assert canonical_name(copy) == "model.vision_tower.adapters.1.gate.0.weight"
    assert part_of(copy) == "connector"
    assert part_of("base_model.model.model.vision_tower.fast_mask_embed.original_module.weight") == "mask"
    lora = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert part_of(lora) == "language"


@pytest.mark.parametrize("cls", [FineCaptionForConditionalGeneration, FineCaptionModel])
def test_unquantised_and_fp32_lists_act_as_the_old_ones(cls):
    assert FineCaptionForConditionalGeneration._keep_in_fp32_modules == keep_in_fp32_modules()
    model = meta_model(cls, **ALL_OPTIONS)
    # bitsandbytes converts nn.Linear layers only; transformers adds _keep_in_fp32_modules to the skip list.
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    assert linears
    for name in linears:
        old = should_convert_module(name, OLD_QUANT_SKIP + OLD_KEEP_IN_FP32)
        assert should_convert_module(name, quant_skip_modules() + keep_in_fp32_modules()) == old, name
        if cls is FineCaptionForConditionalGeneration:  # what --bits 4|8 loads
            assert should_convert_module(name, quant_skip_modules()) == old, name  # the skip list alone suffices
            assert old == component_of(name).quantised, name
    # float16 loading: the dtype plan searches every state-dict key with these patterns (glob-style).
    old_plan, _, _ = build_glob_alternation(OLD_KEEP_IN_FP32)
    new_plan, _, _ = build_glob_alternation(keep_in_fp32_modules())
    for key in model.state_dict():
        assert bool(new_plan.search(key)) == bool(old_plan.search(key)), key


def test_float16_loading_keeps_the_fp32_components_in_fp32(tiny_checkpoint):
    model = FineCaptionForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float16)
    for name, param in model.named_parameters():
        expected = torch.float32 if component_of(name).fp32 else torch.float16
        assert param.dtype == expected, name


def test_4bit_loading_quantises_exactly_the_quantised_components(tiny_checkpoint):
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    from finecaption_plugin.lora import quantization_config

    for config in (BitsAndBytesConfig(load_in_4bit=True), quantization_config(4, "nf4", True, torch.float32)):
        model = FineCaptionForConditionalGeneration.from_pretrained(tiny_checkpoint, quantization_config=config)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                assert isinstance(module, bnb.nn.Linear4bit) == component_of(name).quantised, name


FLAG_NAMES = ("tune_mm_mlp_adapter", "tune_mask_branch", "full_finetune", "freeze_vision", "freeze_backbone")


@pytest.mark.parametrize("stage", [None, "tune_mm_mlp_adapter", "tune_mask_branch", "full_finetune"])
def test_trained_parts_per_stage_and_flags_as_before(stage):
    for freeze_vision, freeze_backbone, freeze_projector, lora in itertools.product((False, True), repeat=4):
        flags = dict.fromkeys(FLAG_NAMES[:3], False)
        if stage:
            flags[stage] = True
        model_args = SimpleNamespace(**flags, freeze_vision=freeze_vision, freeze_backbone=freeze_backbone)
        training_args = SimpleNamespace(lora_enable=lora, freeze_mm_mlp_adapter=freeze_projector)
        try:
            expected = old_trained_parts(model_args, training_args)
        except ValueError:
            with pytest.raises(ValueError, match="stages 1 and 2"):
                trained_parts(model_args, training_args)
            continue
        assert trained_parts(model_args, training_args) == expected, (model_args, training_args)


@pytest.mark.parametrize("stage", [None, "tune_mm_mlp_adapter", "tune_mask_branch", "full_finetune"])
def test_freeze_mask_branch_and_connector_act_in_the_fine_tuning_stage_only(stage):
    flags = dict.fromkeys(FLAG_NAMES[:3], False)
    if stage:
        flags[stage] = True
    training_args = SimpleNamespace(lora_enable=False, freeze_mm_mlp_adapter=False)
    plain = trained_parts(SimpleNamespace(**flags, freeze_vision=True, freeze_backbone=False), training_args)
    for freeze, part in (("freeze_mask_branch", "mask"), ("freeze_connector", "connector")):
        model_args = SimpleNamespace(**flags, freeze_vision=True, freeze_backbone=False, **{freeze: True})
        expected = plain - {part} if stage is None else plain
        assert trained_parts(model_args, training_args) == expected, (stage, freeze)


def test_trained_parts_refuses_two_stages():
    model_args = SimpleNamespace(tune_mm_mlp_adapter=True, tune_mask_branch=True, full_finetune=False)
    with pytest.raises(ValueError, match="at most one"):
        trained_parts(model_args, SimpleNamespace(lora_enable=False, freeze_mm_mlp_adapter=False))


def test_lora_import_path_still_serves_the_parts():
    from finecaption_plugin import lora

    assert lora.PARTS == PARTS == ("mask", "connector", "projector", "vision", "language")
    assert lora.part_of is part_of and lora.trained_parts is trained_parts
    assert lora.QUANT_SKIP_MODULES == quant_skip_modules()


def test_modules_to_save_lists_called_modules_of_the_parts():
    model = meta_model(**ALL_OPTIONS)
    names = modules_to_save(model, {"mask", "connector", "projector"})
    assert names == [
        "model.vision_tower.fast_mask_embed",
        "model.vision_tower.slow_mask_embed",
        "model.vision_tower.adapters.0",
        "model.vision_tower.adapters.1",
        "model.vision_tower.adapters.2",
        "model.vision_tower.fusion",
        "model.multi_modal_projector",
    ]
    modules = dict(model.named_modules())
    assert not any(isinstance(modules[name], torch.nn.ModuleList) for name in names)
    # Absent optional modules are left out; the vision part lists its towers.
    plain = meta_model()
    assert modules_to_save(plain, {"mask"}) == ["model.vision_tower.fast_mask_embed"]
    assert modules_to_save(plain, {"vision"}) == ["model.vision_tower.fast_tower", "model.vision_tower.slow_tower"]
    assert modules_to_save(plain, set()) == []
    with pytest.raises(ValueError, match="LoRA"):
        modules_to_save(plain, {"language"})
    with pytest.raises(ValueError, match="unknown parts"):
        modules_to_save(plain, {"towers"})
