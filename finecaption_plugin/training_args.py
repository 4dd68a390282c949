"""The flags of ``finecaption train``: LLaVA's (and LLaVA-HR's) ``train.py`` flags with their meaning, plus
FineCaption's training stages. Parsed by `transformers.HfArgumentParser`, so every `TrainingArguments`
flag works too.

Flags that in LLaVA choose the architecture (``--vision_tower``, ``--mm_projector_type``, ...) are
accepted so that LLaVA scripts run unchanged; FineCaption reads the architecture from the checkpoint's
``config.json``, and `check_architecture_flags` rejects a flag that contradicts it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import transformers

logger = logging.getLogger(__name__)


def _has_accelerator() -> bool:
    """Whether torch sees a GPU (CUDA/ROCm, XPU, NPU, MPS) or a TPU to train on."""
    import torch
    from transformers.utils import is_torch_npu_available, is_torch_xla_available

    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool(
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or (mps is not None and mps.is_available())
        or is_torch_npu_available()
        or is_torch_xla_available()
    )


# LLaVA's --image_aspect_ratio values and the FineCaptionImageProcessor aspect_ratio each one means
# (LLaVA's "square" stretches the image to a square; "pad" pads it with the mean colour).
IMAGE_ASPECT_RATIOS = {"square": "resize", "pad": "pad"}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "FineCaption checkpoint (see `finecaption convert` for LLaVA-HR ones)"},
    )
    version: str = field(
        default="llama3", metadata={"help": "conversation template: llama3, vicuna_v1, plain"}
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "freeze the language model"})
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "stage 1: train only the projector, MR-adapters and fusion"}
    )
    tune_mask_branch: bool = field(
        default=False, metadata={"help": "FineCaption stage 2: train only the mask branch (Alpha-CLIP convs)"}
    )
    full_finetune: bool = field(
        default=False, metadata={"help": "FineCaption stage 3: train everything, vision towers included"}
    )
    freeze_vision: bool = field(
        default=True, metadata={"help": "LLaVA-HR: keep the CLIP and ConvNeXt towers frozen"}
    )
    freeze_mask_branch: bool = field(
        default=False, metadata={"help": "fine-tuning stage: keep the mask branch (Alpha-CLIP convs) frozen"}
    )
    freeze_connector: bool = field(
        default=False, metadata={"help": "fine-tuning stage: keep the MR-adapters and fusion frozen"}
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "mm_projector.bin of a stage-1 run, loaded into the projector"}
    )
    # Architecture flags of LLaVA / LLaVA-HR scripts, checked against the checkpoint.
    vision_tower: str | None = field(default=None, metadata={"help": "accepted for LLaVA scripts; unused"})
    vision_tower_slow: str | None = field(default=None, metadata={"help": "accepted for LLaVA-HR; unused"})
    mm_vision_select_layer: int = field(default=-1, metadata={"help": "accepted for LLaVA scripts; unused"})
    mm_vision_select_feature: str = field(default="patch", metadata={"help": "must be 'patch'"})
    mm_projector_type: str = field(default="mlp2x_gelu", metadata={"help": "must be 'mlp2x_gelu'"})
    mm_use_im_start_end: bool = field(default=False, metadata={"help": "must be False"})
    mm_use_im_patch_token: bool = field(default=False, metadata={"help": "must be False"})
    mm_patch_merge_type: str = field(default="flat", metadata={"help": "must be 'flat'"})
    is_multipath_encoder: bool = field(default=True, metadata={"help": "LLaVA-HR; must be True"})
    input_image_size: int | None = field(
        default=None, metadata={"help": "LLaVA-HR; must equal the checkpoint's image_size"}
    )


@dataclass
class DataArguments:
    data_path: str | None = field(
        default=None, metadata={"help": "LLaVA conversation JSON/JSONL or CompositionCap JSONL"}
    )
    image_folder: str | None = field(default=None, metadata={"help": "root of relative image and mask paths"})
    image_aspect_ratio: str = field(default="square", metadata={"help": "square (stretch) or pad"})
    allow_outside_data_folder: bool = field(
        default=False,
        metadata={
            "help": "let image and mask paths leave --image_folder (absolute, '..', symlinks); refused by default"
        },
    )
    lazy_preprocess: bool = field(default=True, metadata={"help": "accepted for LLaVA scripts; always lazy"})
    is_multimodal: bool = field(default=True, metadata={"help": "accepted for LLaVA scripts"})

    def __post_init__(self):
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(
                f"--image_aspect_ratio must be {' or '.join(IMAGE_ASPECT_RATIOS)}, got {self.image_aspect_ratio!r}"
            )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    # LLaVA scripts pass transformers 4's name; transformers 5 calls it eval_strategy.
    evaluation_strategy: str | None = field(default=None, metadata={"help": "old name of --eval_strategy"})
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "transformers 4's warmup fraction; transformers 5 takes it as --warmup_steps"}
    )
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "keep the projector frozen"})
    mpt_attn_impl: str | None = field(default=None, metadata={"help": "accepted for LLaVA scripts; unused"})
    model_max_length: int = field(default=2048, metadata={"help": "longest sequence, image tokens included"})
    double_quant: bool = field(default=True, metadata={"help": "4-bit: quantise the quantisation constants"})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 or fp4"})
    bits: int = field(default=16, metadata={"help": "16, 8 or 4 (QLoRA, needs --lora_enable)"})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = field(default="", metadata={"help": "accepted for LLaVA scripts; unused"})
    lora_bias: str = field(default="none", metadata={"help": "none, all or lora_only"})
    mm_projector_lr: float | None = field(default=None, metadata={"help": "learning rate of the projector"})
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "batches of image samples and of text-only samples, by length"}
    )

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        if self.bits not in (4, 8, 16):
            raise ValueError(f"--bits must be 4, 8 or 16, got {self.bits}")
        if self.bits in (4, 8) and not self.lora_enable:
            raise ValueError(
                f"--bits {self.bits} trains adapters on a quantised model: add --lora_enable True"
            )
        if self.lora_bias not in ("none", "all", "lora_only"):
            raise ValueError(f"--lora_bias must be none, all or lora_only, got {self.lora_bias!r}")
        # LLaVA scripts pass --gradient_checkpointing, which transformers 5 renamed: take it as the new name, so the
        # run does not warn about a flag the user copied from LLaVA.
        for old, new in (
            ("gradient_checkpointing", "activation_checkpointing"),
            ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
        ):
            if getattr(self, new, None) is None and getattr(self, old, None) is not None and hasattr(self, new):
                setattr(self, new, getattr(self, old))
        if not self.use_cpu and not _has_accelerator():
            # Without this, --bf16 on a CPU-only machine stops with "You need to assign use_cpu".
            logger.info("no GPU found: training on the CPU (as with --use_cpu True)")
            self.use_cpu = True
        super().__post_init__()


def check_architecture_flags(model_args: ModelArguments, data_args: DataArguments, config) -> None:
    """Reject LLaVA architecture flags that contradict the FineCaption checkpoint's configuration."""
    fixed = {
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat",
        "is_multipath_encoder": True,
    }
    for name, value in fixed.items():
        if getattr(model_args, name) != value:
            raise ValueError(
                f"--{name} {getattr(model_args, name)} is not supported: FineCaption uses {value}"
            )
    if model_args.input_image_size is not None and model_args.input_image_size != config.image_size:
        raise ValueError(
            f"--input_image_size {model_args.input_image_size} differs from the checkpoint's image_size "
            f"{config.image_size}"
        )
    stages = [model_args.tune_mm_mlp_adapter, model_args.tune_mask_branch, model_args.full_finetune]
    if sum(stages) > 1:
        raise ValueError("choose at most one of --tune_mm_mlp_adapter, --tune_mask_branch, --full_finetune")
