"""FineCaption configuration: LLaVA-HR's dual-resolution vision tower with an Alpha-CLIP mask branch."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedConfig, SamVisionConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

# The slow (ConvNeXt) and SAM paths both end at output stride 32: one image token per 32x32 pixels.
SLOW_OUTPUT_STRIDE = 32

# OpenAI's CLIP ViT-L/14 at 336 px: the widths and depth of ViT-L, then the patch grid and CLIP's own settings.
_CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)  # fmt: skip
_LLAMA_3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128257,  # LLaMA-3's 128,256 tokens plus the added "<image>"
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    bos_token_id=128000,
    eos_token_id=[128001, 128009],
)
_SAM_VIT_L = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    global_attn_indexes=[5, 11, 17, 23],
    output_channels=256,
    patch_size=16,
    window_size=14,
)
_FINECAPTION_8B = dict(
    vision_config=_CLIP_L_336,
    text_config=_LLAMA_3_8B,
    slow_depths=[3, 3, 27, 3],
    slow_dims=[192, 384, 768, 1536],
    slow_norm_eps=1e-6,
    image_size=1024,
    image_token_id=128256,
    pad_token_id=128004,
)

# The small SAM ViT of the toy presets (`use_sam_tower=True` on them), for tests of the paper's tower.
_TOY_SAM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    global_attn_indexes=[1],
    output_channels=16,
    patch_size=16,
    window_size=4,
    num_pos_feats=8,
    mlp_dim=64,
)


def _toy_preset(
    *, image_size: int, slow_dims: list[int], clip: dict[str, Any], llama: dict[str, Any], **options: Any
) -> dict:
    """A preset at toy widths: a 4-layer CLIP/14 (``clip``: its widths, heads and ``image_size``, which is also
    the fast path's minimum), a 4-stage ConvNeXt of depths 1-1-2-1 and ``slow_dims``, a LLaMA of 4 heads
    (``llama``: widths, layers, ``vocab_size``), ``_TOY_SAM``; token ids 3 (``<image>``) and 2 (padding);
    ``options``: other config fields."""
    return dict(
        options,
        vision_config=dict(clip, num_hidden_layers=4, patch_size=14, hidden_act="quick_gelu"),
        text_config=dict(
            llama, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False
        ),
        sam_config=_TOY_SAM,
        slow_depths=[1, 1, 2, 1],
        slow_dims=slow_dims,
        image_size=image_size,
        fast_min_image_size=clip["image_size"],
        image_token_id=3,
        pad_token_id=2,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # Same code path as the full model at toy widths: 4 CLIP layers (4 adapter groups of 1), a 4-stage ConvNeXt,
    # a 2-layer LLaMA; 128 px images give a 4x4 grid, i.e. 16 image tokens. vocab_size matches `tiny.py`.
    "tiny": _toy_preset(
        image_size=128,
        slow_dims=[8, 16, 24, 32],
        clip=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, image_size=28, projection_dim=16),
        llama=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=384),
    ),
    # The shipped demo model (`finecaption_plugin.demo`): trained from scratch on generated scenes on a 2-core CPU in
    # under an hour, at most 16 MB. 256 px scenes: an 8x8 slow grid and a 112 px CLIP path, i.e. 64 image tokens.
    # vocab_size is the size of the tokenizer learnt from the generator's text (`demo.build_demo_tokenizer`).
    # Grown from nothing, it reads the mask in the ConvNeXt too (a shape is mostly the outline of its mask, and
    # the 14 px CLIP patches at 112 px see it coarsely) and starts its layer scale at 1 (see slow_layer_scale_init).
    "demo": _toy_preset(
        image_size=256,
        slow_dims=[24, 48, 96, 128],
        clip=dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, image_size=112, projection_dim=64),
        llama=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, vocab_size=1024),
        slow_mask_embedding=True,
        slow_layer_scale_init=1.0,
    ),
    "finecaption-8b": _FINECAPTION_8B,
    "finecaption-x": dict(
        _FINECAPTION_8B, slow_depths=[3, 4, 30, 3], slow_dims=[384, 768, 1536, 3072], slow_norm_eps=1e-5
    ),
    "finecaption-paper": dict(_FINECAPTION_8B, sam_config=_SAM_VIT_L, use_sam_tower=True),
}


class FineCaptionSamConfig(SamVisionConfig):
    r"""
    SAM's vision configuration as FineCaption's `sam_config`: `SamVisionConfig` with the key it has in a FineCaption
    checkpoint's `config.json` as its `base_config_key`, so `FineCaptionSamConfig.from_pretrained(checkpoint)` loads
    the SAM tower's configuration on its own (`SamVisionConfig`'s own key, `vision_config`, holds CLIP's here). The
    saved form is SAM's (`model_type` `sam_vision_model`).
    """

    base_config_key = "sam_config"


@strict
class FineCaptionConfig(PreTrainedConfig):
    r"""
    Configuration of [`FineCaptionForConditionalGeneration`].

    The vision side is LLaVA-HR's mixture-of-resolution encoder: a CLIP ViT on a downscaled copy of the image
    (the *fast* path), a timm ConvNeXt on the full `image_size` image (the *slow* path), three MR-Adapters that
    inject slow features after CLIP layer groups 1-3, and a final fusion. FineCaption adds a zero-initialised
    Alpha-CLIP mask convolution on the CLIP patch embedding (and, optionally, on the ConvNeXt stem), so an
    untrained mask branch leaves every output unchanged. With `use_sam_tower`, a SAM ViT runs beside the
    ConvNeXt and their maps are concatenated along channels (the paper's own figure).

    Args:
        vision_config: CLIP vision tower (the fast path).
        text_config: LLaMA language model.
        sam_config: SAM ViT tower, used when `use_sam_tower` is set; its `image_size` follows `image_size`.
        slow_depths, slow_dims, slow_norm_eps: ConvNeXt stages (timm names), e.g. ConvNeXt-L `[3, 3, 27, 3]`,
            `[192, 384, 768, 1536]`.
        slow_layer_scale_init: initial value of the ConvNeXt blocks' layer scale (timm's `ls_init_value`): 1e-6,
            ConvNeXt's own, for weights that are loaded; a model trained from nothing in a few thousand steps
            learns far faster from 1.0 (the demo preset), its blocks then contributing from the first step.
        image_size: side S of the square input; the model sees `(S / 32) ** 2` image tokens.
        fast_min_image_size: lower bound of the fast path's input side, `max(S / 32 * patch, this)` (336 in
            LLaVA-HR).
        use_sam_tower: add the SAM tower to the slow path (channel concatenation).
        slow_mask_embedding: add a zero-init mask convolution to the ConvNeXt stem as well.
        mask_mean, mask_std: Alpha-CLIP's normalisation of the 0/1 mask.
        pixel_mean, pixel_std: the normalisation of `pixel_values` (the image processor's `image_mean`, `image_std`;
            CLIP's).
        sam_pixel_mean, sam_pixel_std: the normalisation the SAM tower was trained with (ImageNet's, as SAM's own
            processor); the SAM tower's input is renormalised to it.
        image_token_id: id of the `<image>` token that the processor expands to the image tokens.
        projector_hidden_act: activation of the `mlp2x_gelu` projector.
    """

    model_type = "finecaption"
    sub_configs_defaults: ClassVar = {
        "vision_config": SubConfigSpec(config_class=CLIPVisionConfig, init_kwargs=_CLIP_L_336),
        "text_config": SubConfigSpec(config_class=LlamaConfig),
        # Each sub-config class reads its own key of a saved config.json (`base_config_key`; LlamaConfig finds its
        # `model_type`), so `config.sub_configs[key].from_pretrained(checkpoint)` loads that sub-config alone.
        "sam_config": SubConfigSpec(config_class=FineCaptionSamConfig, init_kwargs=_SAM_VIT_L),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None
    slow_depths: list[int] | tuple[int, ...] = (3, 3, 27, 3)
    slow_dims: list[int] | tuple[int, ...] = (192, 384, 768, 1536)
    slow_norm_eps: float = 1e-6
    slow_layer_scale_init: float = 1e-6
    image_size: int = 1024
    fast_min_image_size: int = 336
    use_sam_tower: bool = False
    slow_mask_embedding: bool = False
    mask_mean: float = 0.5
    mask_std: float = 0.26
    pixel_mean: list[float] | tuple[float, ...] = tuple(OPENAI_CLIP_MEAN)
    pixel_std: list[float] | tuple[float, ...] = tuple(OPENAI_CLIP_STD)
    sam_pixel_mean: list[float] | tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    sam_pixel_std: list[float] | tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)
    image_token_id: int = 128256
    pad_token_id: int | None = None
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.slow_depths = list(self.slow_depths)
        self.slow_dims = list(self.slow_dims)
        for name in ("pixel_mean", "pixel_std", "sam_pixel_mean", "sam_pixel_std"):
            setattr(self, name, list(getattr(self, name)))
        self.sam_config.image_size = self.image_size
        self.validate_geometry()

    def validate_geometry(self) -> None:
        """Raise a `ValueError` for shapes the dual path cannot align."""
        if self.image_size % SLOW_OUTPUT_STRIDE:
            raise ValueError(f"image_size must be a multiple of {SLOW_OUTPUT_STRIDE}, got {self.image_size}")
        if self.vision_config.num_hidden_layers % 4:
            raise ValueError(
                "the CLIP tower is split in 4 layer groups around the 3 MR-Adapters: num_hidden_layers must be "
                f"a multiple of 4, got {self.vision_config.num_hidden_layers}"
            )
        if len(self.slow_depths) != 4 or len(self.slow_dims) != 4:
            raise ValueError("slow_depths and slow_dims describe the 4 ConvNeXt stages: give 4 values each")
        if self.fast_image_size % self.vision_config.patch_size:
            raise ValueError(
                f"the fast path's input side {self.fast_image_size} is not a multiple of the CLIP patch size"
            )
        fast_grid, slow_grid = self.fast_grid_size, self.grid_size
        if fast_grid % slow_grid and slow_grid % fast_grid:
            raise ValueError(f"fast grid {fast_grid} and slow grid {slow_grid} must divide one another")

    @property
    def grid_size(self) -> int:
        """Side of the slow feature map, `S / 32`."""
        return self.image_size // SLOW_OUTPUT_STRIDE

    @property
    def fast_image_size(self) -> int:
        """Side the image is resized to for the CLIP path: `max(S / 32 * patch, fast_min_image_size)`."""
        return max(self.grid_size * self.vision_config.patch_size, self.fast_min_image_size)

    @property
    def fast_grid_size(self) -> int:
        return self.fast_image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the language model sees: one per cell of the fast grid, LLaVA-HR's output resolution."""
        return self.fast_grid_size**2

    @property
    def slow_channels(self) -> int:
        """Channels of the slow map fed to the adapters: ConvNeXt's last stage, plus SAM's unshuffled neck."""
        sam_channels = self.sam_config.output_channels * 4 if self.use_sam_tower else 0
        return self.slow_dims[-1] + sam_channels

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> FineCaptionConfig:
        """A configuration by preset name (`tiny`, `finecaption-8b`, `finecaption-x`, `finecaption-paper`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = copy.deepcopy(PRESETS[name])
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
                kwargs[key].update(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)


__all__ = ["FineCaptionConfig", "FineCaptionSamConfig", "PRESETS"]
