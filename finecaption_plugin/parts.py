"""The one table of FineCaption's parts: where each lives, whether it is quantised or kept in fp32, when it trains.

Every parameter of `FineCaptionForConditionalGeneration` belongs to exactly one *component* (a row of
`COMPONENTS`, found by module-path prefix), and every component to one training *part* (a row of `PARTS`).
The rest of the package derives from these two tables:

- ``finecaption info`` counts parameters per component (`info.COMPONENTS` = `component_prefixes`);
- ``--bits 4|8`` and ``load_in_4bit`` quantise only components with ``quantised=False`` left out
  (`quant_skip_modules`, bitsandbytes' ``llm_int8_skip_modules``);
- loading in float16 keeps components with ``fp32=True`` in float32 (`keep_in_fp32_modules`, the model's
  ``_keep_in_fp32_modules``);
- training: `trained_parts` reads the stage flags against `PARTS`, `part_of` names a parameter's part, and
  `modules_to_save` lists the modules a LoRA run trains fully (peft's ``modules_to_save``).

This module imports nothing heavy, so the modeling code and the command line can read it freely.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Component:
    """A group of modules counted together by ``finecaption info``."""

    name: str
    part: str  # the training part (a key of PARTS)
    prefixes: tuple[str, ...]  # module paths inside FineCaptionForConditionalGeneration
    quantised: bool  # --bits 4|8 / load_in_4bit turn its linear layers into bitsandbytes layers
    fp32: bool  # kept in float32 when the model is loaded in float16


# The stages chosen by the flags of `finecaption train` (at most one flag; none: LLaVA's fine-tuning stage).
STAGE_FLAGS = {"tune_mm_mlp_adapter": "pretrain", "tune_mask_branch": "mask", "full_finetune": "full"}
STAGES = ("pretrain", "mask", "full", "finetune")


@dataclass(frozen=True)
class Part:
    """What trains together.

    ``stages`` maps each stage that trains the part fully to the flag that keeps it frozen there anyway
    (``None``: nothing does). With ``--lora_enable``, a part with ``lora=True`` is trained through LoRA
    adapters instead of fully.
    """

    name: str
    stages: dict[str, str | None] = field(hash=False)
    lora: bool = False


COMPONENTS: tuple[Component, ...] = (
    Component("fast_tower", "vision", ("model.vision_tower.fast_tower",), quantised=False, fp32=True),
    Component("slow_tower", "vision", ("model.vision_tower.slow_tower",), quantised=False, fp32=True),
    Component("sam_tower", "vision", ("model.vision_tower.sam_tower",), quantised=False, fp32=True),
    Component(
        "mask_branch",
        "mask",
        ("model.vision_tower.fast_mask_embed", "model.vision_tower.slow_mask_embed"),
        quantised=False,
        fp32=True,
    ),
    Component("adapters", "connector", ("model.vision_tower.adapters",), quantised=False, fp32=True),
    Component("fusion", "connector", ("model.vision_tower.fusion",), quantised=False, fp32=True),
    Component("projector", "projector", ("model.multi_modal_projector",), quantised=False, fp32=True),
    Component("language_model", "language", ("model.language_model",), quantised=True, fp32=False),
    # llm_int8_skip_modules replaces bitsandbytes' default list (which holds lm_head), so it is listed here.
    Component("lm_head", "language", ("lm_head",), quantised=False, fp32=False),
)

_FREEZE_PROJECTOR = "freeze_mm_mlp_adapter"
PARTS_TABLE: tuple[Part, ...] = (
    Part("mask", {"mask": None, "full": None, "finetune": "freeze_mask_branch"}),
    Part("connector", {"pretrain": None, "full": None, "finetune": "freeze_connector"}),
    Part("projector", {"pretrain": _FREEZE_PROJECTOR, "full": _FREEZE_PROJECTOR, "finetune": _FREEZE_PROJECTOR}),
    Part("vision", {"full": None, "finetune": "freeze_vision"}),
    Part("language", {"full": None, "finetune": "freeze_backbone"}, lora=True),
)
PARTS: tuple[str, ...] = tuple(part.name for part in PARTS_TABLE)

PEFT_PREFIX = "base_model.model."
# peft's wrappers of a fully trained module: the trained copy and the frozen original.
_TRAINED_COPY = re.compile(r"\.modules_to_save\.[^.]+\.")
_ORIGINAL = ".original_module."


def component_prefixes() -> dict[str, tuple[str, ...]]:
    """Component name -> module prefixes ending with a dot (what ``finecaption info`` matches)."""
    return {component.name: tuple(prefix + "." for prefix in component.prefixes) for component in COMPONENTS}


def _relative_patterns(components: Iterable[Component]) -> list[str]:
    # Relative to any enclosing model ("model." or none: FineCaptionModel has no such prefix), as regexes.
    return [
        ".*" + re.escape(prefix.removeprefix("model."))
        for component in components
        for prefix in component.prefixes
    ]


def keep_in_fp32_modules() -> list[str]:
    """The model's ``_keep_in_fp32_modules``: patterns of the components kept in float32.

    transformers also adds them to bitsandbytes' skip list, so that a plain ``BitsAndBytesConfig`` quantises
    none of them.
    """
    return _relative_patterns(component for component in COMPONENTS if component.fp32)


def quant_skip_modules() -> list[str]:
    """bitsandbytes' ``llm_int8_skip_modules`` for ``--bits 4|8``: every component left unquantised."""
    return [prefix for component in COMPONENTS if not component.quantised for prefix in component.prefixes]


def is_copy(name: str) -> bool:
    """Whether ``name`` is inside a copy peft trains as ``modules_to_save``."""
    return _TRAINED_COPY.search(name) is not None


def unwrapped_name(name: str) -> str:
    """A name inside peft's trained copy of a module -> the name it has in the module it replaces.

    ``base_model.model.model.vision_tower.fast_mask_embed.modules_to_save.default.weight`` ->
    ``base_model.model.model.vision_tower.fast_mask_embed.weight``; other names are returned unchanged.
    """
    return _TRAINED_COPY.sub(".", name)


def canonical_name(name: str) -> str:
    """A parameter name of the model, a PeftModel or peft's trained copy -> the plain model's name.

    ``base_model.model.model.vision_tower.fast_mask_embed.modules_to_save.default.weight`` ->
    ``model.vision_tower.fast_mask_embed.weight``. peft's frozen originals (``.original_module.``) keep theirs.
    """
    return unwrapped_name(name.removeprefix(PEFT_PREFIX))


def component_of(name: str) -> Component:
    """The component a parameter (or module) name belongs to; plain, PeftModel and peft wrapper names alike."""
    plain = canonical_name(name).replace(_ORIGINAL, ".")
    for component in COMPONENTS:
        if any(plain == prefix or plain.startswith(prefix + ".") for prefix in component.prefixes):
            return component
    raise KeyError(f"{name!r} is in no component of FineCaption (finecaption_plugin.parts.COMPONENTS)")


def part_of(name: str) -> str:
    """The training part a parameter of `FineCaptionForConditionalGeneration` belongs to, from its name."""
    return component_of(name).part


def _flag(name: str, *namespaces) -> bool:
    return any(getattr(namespace, name, False) for namespace in namespaces)


def stage_of(model_args) -> str:
    """The training stage the flags choose (one of `STAGES`)."""
    chosen = [stage for flag, stage in STAGE_FLAGS.items() if getattr(model_args, flag, False)]
    if len(chosen) > 1:
        raise ValueError("choose at most one of " + ", ".join(f"--{flag}" for flag in STAGE_FLAGS))
    return chosen[0] if chosen else "finetune"


def trained_parts(model_args, training_args) -> set[str]:
    """The parts trained fully (not through LoRA) for the stage and freeze flags the arguments choose."""
    stage = stage_of(model_args)
    parts = set()
    for part in PARTS_TABLE:
        if stage in part.stages:
            freeze = part.stages[stage]
            if freeze is None or not _flag(freeze, model_args, training_args):
                parts.add(part.name)
    if getattr(training_args, "lora_enable", False):
        if stage in ("pretrain", "mask"):
            raise ValueError("--lora_enable trains the language model; stages 1 and 2 keep it frozen")
        parts -= {part.name for part in PARTS_TABLE if part.lora}  # trained through the LoRA adapters instead
    return parts


def modules_to_save(model, parts: Iterable[str]) -> list[str]:
    """Full paths of the modules of `model` (a FineCaptionForConditionalGeneration) that make up ``parts``.

    These are peft's ``modules_to_save`` for a LoRA run. Containers (the MR-adapters' ``ModuleList``) are
    listed by their children, since peft wraps modules that are called, and absent optional modules (no SAM
    tower, no ConvNeXt mask conv) are left out.
    """
    from torch import nn

    parts = set(parts)
    unknown = parts - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; the parts are {', '.join(PARTS)}")
    through_lora = parts & {part.name for part in PARTS_TABLE if part.lora}
    if through_lora:
        raise ValueError(f"{sorted(through_lora)} train through LoRA adapters, not as modules_to_save")
    modules = dict(model.named_modules())
    names = []
    for component in COMPONENTS:
        if component.part not in parts:
            continue
        for prefix in component.prefixes:
            module = modules.get(prefix)
            if module is None:
                continue
            if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                names.extend(f"{prefix}.{child}" for child, _ in module.named_children())
            else:
                names.append(prefix)
    return names
