"""PyTorch FineCaption: LLaVA-HR's mixture-of-resolution encoder with an Alpha-CLIP mask branch and a LLaMA LM."""


import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoder,
    CLIPEncoderLayer,
    CLIPPreTrainedModel,
    CLIPVisionEmbeddings,
)
from transformers.models.sam.modeling_sam import SamVisionEncoder
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_finecaption import FineCaptionConfig
from .parts import keep_in_fp32_modules

# transformers renamed `past_key_values` to `cache`; as in LLaVA, the old keyword is mapped, with a warning, until:
_PAST_KEY_VALUES_REMOVED_IN = "5.40.0"


class ImageHiddenStatesMixin:
    """LLaVA's `image_hidden_states` on an output that carries `image_outputs`."""

    image_outputs: BaseModelOutputWithPooling | None

    @property
    def image_hidden_states(self) -> torch.FloatTensor | None:
        """The projected image features `[images, image_tokens, text_hidden]` (LLaVA's name for
        `image_outputs.pooler_output`); None without images."""
        return None if self.image_outputs is None else self.image_outputs.pooler_output


@dataclass
class FineCaptionModelOutputWithPast(ImageHiddenStatesMixin, MultimodalBaseModelOutputWithPast):
    r"""
    [`FineCaptionModel`]'s output: the language model's (`last_hidden_state`, `cache`, `hidden_states`, `attentions`)
    and, when images were given, `image_outputs`, the [`~FineCaptionModel.get_image_features`] output:
    `last_hidden_state` the vision tower's fused tokens `[images, image_tokens, clip_dim]`, `pooler_output` the
    projected features `[images, image_tokens, text_hidden]`, and the CLIP layers' `hidden_states`/`attentions` when
    asked for.
    """


@dataclass
class FineCaptionCausalLMOutputWithPast(ImageHiddenStatesMixin, MultimodalCausalLMOutputWithPast):
    r"""
    [`FineCaptionForConditionalGeneration`]'s output: `loss`, `logits` and the language model's `cache`,
    `hidden_states`, `attentions`; `image_outputs` as in [`FineCaptionModelOutputWithPast`].
    """


def align_to_grid(feature_map: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Bring a `[batch, channels, h, h]` map to `grid_size`, as LLaVA-HR does, and flatten it to tokens.

    Upsampling is bilinear with `align_corners=True` (computed in float32); downsampling is average pooling.
    Returns `[batch, grid_size ** 2, channels]`.
    """
    side = feature_map.shape[-1]
    if side < grid_size:
        feature_map = F.interpolate(
            feature_map.float(), size=(grid_size, grid_size), mode="bilinear", align_corners=True
        ).to(feature_map.dtype)
    elif side > grid_size:
        feature_map = F.avg_pool2d(feature_map, side // grid_size)
    return feature_map.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """`[batch, g * g, channels]` tokens to a `[batch, channels, g, g]` map."""
    batch, length, channels = tokens.shape
    side = int(length**0.5)
    return tokens.transpose(1, 2).reshape(batch, channels, side, side)


def resample_position_embeddings(patch_positions: torch.Tensor, grid_size: int) -> torch.Tensor:
    """LLaVA-HR's position-embedding resampling: bicubic with antialias over the patch grid.

    `patch_positions` is `[old * old, dim]` (no CLS row); returns `[grid_size ** 2, dim]`.
    """
    old = int(patch_positions.shape[0] ** 0.5)
    if old == grid_size:
        return patch_positions
    grid = patch_positions.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(grid_size * grid_size, -1).to(patch_positions.dtype)


class FineCaptionMaskEmbedding(nn.Conv2d):
    """Alpha-CLIP's `conv1_alpha`: a bias-free patch convolution on the normalised mask, zero at init."""

    def __init__(self, out_channels: int, patch_size: int):
        super().__init__(1, out_channels, kernel_size=patch_size, stride=patch_size, bias=False)


class FineCaptionMRAdapter(nn.Module):
    """LLaVA-HR's MR-Adapter (`S2FStitchAlignModuleV2`): gated injection of slow features into fast tokens.

    With `H = slow_proj(gelu(slow_conv(F_h)))` aligned to the fast grid and
    `L = F_l + fast_proj(gelu(fast_conv(F_l)))`, it returns `L + tanh(gate(mean(concat[L, H]))) * H`.
    `slow_proj` and `fast_proj` start at zero, so a fresh adapter is the identity.
    """

    def __init__(self, fast_dim: int, slow_dim: int):
        super().__init__()
        self.slow_conv = nn.Conv2d(slow_dim, slow_dim, 1)
        self.slow_proj = nn.Conv2d(slow_dim, fast_dim, 1)
        self.fast_conv = nn.Conv2d(fast_dim, fast_dim, 7, padding=3, groups=fast_dim)
        self.fast_proj = nn.Conv2d(fast_dim, fast_dim, 1)
        self.gate = nn.Sequential(nn.Linear(fast_dim * 2, fast_dim // 2), nn.GELU(), nn.Linear(fast_dim // 2, 1))

    def forward(self, fast_tokens: torch.Tensor, slow_map: torch.Tensor) -> torch.Tensor:
        """`fast_tokens` `[batch, g * g, fast_dim]` and `slow_map` `[batch, slow_dim, h, h]` -> like `fast_tokens`."""
        fast_map = tokens_to_map(fast_tokens)
        high = align_to_grid(self.slow_proj(F.gelu(self.slow_conv(slow_map))), fast_map.shape[-1])
        low = fast_map + self.fast_proj(F.gelu(self.fast_conv(fast_map)))
        low = low.flatten(2).transpose(1, 2)
        gate = self.gate(torch.cat([low, high], dim=-1).mean(dim=1)).unsqueeze(1)
        return low + gate.tanh() * high


class FineCaptionFusion(nn.Module):
    """LLaVA-HR's final fusion (`MultiPathAlignModule`): `fast_proj(F_l) + slow_proj(align(F_h))`."""

    def __init__(self, fast_dim: int, slow_dim: int):
        super().__init__()
        self.fast_proj = nn.Linear(fast_dim, fast_dim)
        self.slow_proj = nn.Linear(slow_dim, fast_dim)

    def forward(self, fast_tokens: torch.Tensor, slow_map: torch.Tensor) -> torch.Tensor:
        grid = int(fast_tokens.shape[1] ** 0.5)
        return self.fast_proj(fast_tokens) + self.slow_proj(align_to_grid(slow_map, grid))


class InitializedLikeBuiltInModels:
    """Mixin of our `PreTrainedModel`s: transformers initialises their missing weights as it does its own models'.

    transformers skips, in code outside its package, modules whose own parameters are all loaded, since such code
    may write weights without `transformers.initialization`. Ours uses it (loaded tensors are left alone), and the
    MR-Adapters (and CLIP's attention and MLP) own no direct parameters: the skip would leave their zero-init
    convolutions random and CLIP's linears at the generic init.
    """

    @classmethod
    def is_custom_code(cls) -> bool:
        return cls.is_remote_code()


class FineCaptionPreTrainedModel(InitializedLikeBuiltInModels, PreTrainedModel):
    config: FineCaptionConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # The dual path mixes fast and slow features at every adapter: keep the vision tower on one device.
    _no_split_modules = ["FineCaptionVisionTower", "LlamaDecoderLayer"]
    # transformers adds these to bitsandbytes' skip list, so a plain `BitsAndBytesConfig(load_in_4bit=True)` quantises
    # only the language model (lm_head is skipped by default); loading in fp16 keeps them in fp32.
    _keep_in_fp32_modules = keep_in_fp32_modules()  # the components with fp32=True in parts.COMPONENTS
    _skip_keys_device_placement = "cache"
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # Static shapes throughout (image tokens, grids, the image-token check through `torch_compilable_check`):
    # static-cache generation and `torch.compile(fullgraph=True)` work (tests/test_modeling_finecaption.py).
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FineCaptionMaskEmbedding):
            init.zeros_(module.weight)
        elif isinstance(module, FineCaptionMRAdapter):
            init.xavier_uniform_(module.slow_conv.weight)
            init.xavier_uniform_(module.fast_conv.weight)
            for conv in (module.slow_conv, module.fast_conv, module.slow_proj, module.fast_proj):
                init.zeros_(conv.bias)
            init.zeros_(module.slow_proj.weight)
            init.zeros_(module.fast_proj.weight)
        elif type(module).__name__ == "ConvNeXtBlock" and module.gamma is not None:  # timm's layer scale
            init.constant_(module.gamma, self.config.slow_layer_scale_init)

    def _move_missing_keys_from_meta_to_device(self, missing_keys, *args, **kwargs) -> None:
        # Loading in float16, transformers casts the loaded weights of `_keep_in_fp32_modules` to float32 but gives a
        # weight missing from the checkpoint (a new mask convolution, CLIP's unused class_embedding) the load dtype,
        # beside float32 neighbours. Missing keys follow the same dtype plan as loaded ones, before their init.
        super()._move_missing_keys_from_meta_to_device(missing_keys, *args, **kwargs)
        if is_deepspeed_zero3_enabled():  # parameters partitioned by DeepSpeed: left as transformers made them
            return
        plan = self._get_dtype_plan(self.config.dtype)
        patterns = [re.compile(pattern) for pattern, dtype in plan.items() if dtype == torch.float32]
        for key in missing_keys:
            if not any(pattern.search(key) for pattern in patterns):
                continue
            module_name, _, name = key.rpartition(".")
            module = self.get_submodule(module_name)
            if name in module._parameters and module._parameters[name].is_floating_point():
                parameter = module._parameters[name]
                module._parameters[name] = nn.Parameter(parameter.float(), requires_grad=parameter.requires_grad)
            elif name in module._buffers and module._buffers[name].is_floating_point():
                module._buffers[name] = module._buffers[name].float()

    def set_attn_implementation(self, attn_implementation: str | dict, allow_all_kernels: bool = False) -> None:
        """transformers' `set_attn_implementation`; without the SAM tower (`use_sam_tower=False`), `sam_config` has no
        sub-model to check, so its implementation is set on the config directly, without transformers' warning."""
        config = self.config
        if not isinstance(config, FineCaptionConfig) or config.use_sam_tower:
            return super().set_attn_implementation(attn_implementation, allow_all_kernels=allow_all_kernels)
        if isinstance(attn_implementation, dict):
            requested = dict(attn_implementation)
            sam_implementation = requested.pop("sam_config", None)
        else:
            sam_implementation = attn_implementation
            requested = {"": attn_implementation}
            requested.update({key: attn_implementation for key in config.sub_configs if key != "sam_config"})
        if isinstance(sam_implementation, dict):
            sam_implementation = sam_implementation.get("", config.sam_config._attn_implementation)
        valid = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
        if sam_implementation is not None and sam_implementation not in valid:
            raise ValueError(f"attn_implementation {sam_implementation!r} is not supported for sam_config")
        super().set_attn_implementation(requested, allow_all_kernels=allow_all_kernels)
        if sam_implementation is not None:
            config.sam_config._attn_implementation_internal = sam_implementation


class FineCaptionFastTower(InitializedLikeBuiltInModels, CLIPPreTrainedModel):
    """The CLIP ViT of the fast path, in transformers' CLIP names, without CLS token or post-layernorm.

    Being a `CLIPPreTrainedModel` on `vision_config`, it keeps CLIP's own weight initialisation and takes the
    attention implementation chosen for `vision_config`.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        # LLaVA-HR drops the CLS token before it is built, so no gradient ever reaches `class_embedding` (a trainable
        # parameter without one fails DDP without `find_unused_parameters`). A buffer keeps it out of training and
        # keeps CLIP's key name for checkpoints; unused, it starts (and is re-initialised) at zero, like any buffer
        # with a fixed value, so a model built on the meta device gets the same one.
        class_embedding = torch.zeros_like(self.embeddings.class_embedding.data)
        del self.embeddings.class_embedding
        self.embeddings.register_buffer("class_embedding", class_embedding)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CLIPVisionEmbeddings):
            init.zeros_(module.class_embedding)

    def embed(self, pixel_values: torch.Tensor, mask_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens of `[batch, 3, F, F]` pixels, plus Alpha-CLIP's mask embedding `[batch, dim, g, g]`.

        The CLS token is dropped (LLaVA-HR drops it right after the embeddings, so only the patch positions matter).
        Returns `[batch, g * g, dim]` after `pre_layrnorm`.
        """
        patch_embedding = self.embeddings.patch_embedding
        patches = patch_embedding(pixel_values.to(patch_embedding.weight.dtype))
        if mask_embeds is not None:
            patches = patches + mask_embeds
        grid = patches.shape[-1]
        positions = resample_position_embeddings(self.embeddings.position_embedding.weight[1:], grid)
        return self.pre_layrnorm(patches.flatten(2).transpose(1, 2) + positions)


class FineCaptionSlowTower(nn.Module):
    """timm's ConvNeXt trunk (`stem` and `stages` only, timm's names) for the full-resolution image."""

    def __init__(self, config: FineCaptionConfig):
        super().__init__()
        # Imported here: importing timm probes for optional packages (wandb among them), seconds that
        # `import finecaption_plugin` (Auto registration, the CLI, lmms-eval's plugin scan) should not pay.
        from timm.models.convnext import ConvNeXt

        convnext = ConvNeXt(
            depths=config.slow_depths,
            dims=config.slow_dims,
            norm_eps=config.slow_norm_eps,
            ls_init_value=config.slow_layer_scale_init,
            num_classes=0,
        )
        self.stem = convnext.stem
        self.stages = convnext.stages
        self.gradient_checkpointing = False

    def forward(self, pixel_values: torch.Tensor, mask_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """`[batch, 3, S, S]` (and a stem-level mask embedding) -> `[batch, slow_dims[-1], S / 32, S / 32]`."""
        stem_conv, stem_norm = self.stem
        hidden = stem_conv(pixel_values)
        if mask_embeds is not None:
            hidden = hidden + mask_embeds
        hidden = stem_norm(hidden)
        for stage in self.stages:
            if self.gradient_checkpointing and self.training:
                hidden = self._gradient_checkpointing_func(stage.__call__, hidden)
            else:
                hidden = stage(hidden)
        return hidden


class FineCaptionVisionTower(FineCaptionPreTrainedModel):
    """Mask-aware mixture-of-resolution encoder: `[batch, 3, S, S]` image and mask -> `[batch, tokens, clip_dim]`.

    A sub-model of its own (on the model's config), like LLaVA's vision tower: it reports `_supports_sdpa` and the
    other attention flags, and records the CLIP layers' hidden states and attentions (`output_hidden_states`,
    `output_attentions`). Its children are the sub-models of `vision_config` (`fast_tower`) and `sam_config`
    (`sam_tower`), which take the attention implementation chosen for their sub-config.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _can_record_outputs = {"hidden_states": CLIPEncoderLayer, "attentions": CLIPAttention}

    def __init__(self, config: FineCaptionConfig):
        super().__init__(config)
        clip_dim, patch = config.vision_config.hidden_size, config.vision_config.patch_size
        self.fast_tower = FineCaptionFastTower(config.vision_config)
        self.fast_mask_embed = FineCaptionMaskEmbedding(clip_dim, patch)
        self.slow_tower = FineCaptionSlowTower(config)
        self.slow_mask_embed = (
            FineCaptionMaskEmbedding(config.slow_dims[0], 4) if config.slow_mask_embedding else None
        )
        self.sam_tower = SamVisionEncoder(config.sam_config) if config.use_sam_tower else None
        self.adapters = nn.ModuleList(
            [FineCaptionMRAdapter(clip_dim, config.slow_channels) for _ in range(3)]
        )
        self.fusion = FineCaptionFusion(clip_dim, config.slow_channels)
        self.post_init()

    def normalize_mask(self, mask_values: torch.Tensor | None, pixel_values: torch.Tensor) -> torch.Tensor:
        """Alpha-CLIP's normalisation of a `[batch, 1, S, S]` mask in [0, 1]; no mask means the whole image."""
        if mask_values is None:
            mask_values = pixel_values.new_ones(pixel_values.shape[0], 1, *pixel_values.shape[-2:])
        return (mask_values.to(pixel_values.dtype) - self.config.mask_mean) / self.config.mask_std

    def sam_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[batch, 3, S, S]` pixels normalised with `pixel_mean`/`pixel_std` (CLIP's), renormalised with SAM's."""

        def channels(values: list[float]) -> torch.Tensor:
            return pixel_values.new_tensor(values).view(1, -1, 1, 1)

        config = self.config
        pixels = pixel_values * channels(config.pixel_std) + channels(config.pixel_mean)
        return (pixels - channels(config.sam_pixel_mean)) / channels(config.sam_pixel_std)

    @property
    def slow_path_reads_mask(self) -> bool:
        """Whether the slow map depends on the mask (`slow_mask_embedding`); if not, one image's masks share it."""
        return self.slow_mask_embed is not None

    def slow_features(self, pixel_values: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """The slow map `[batch, slow_channels, S / 32, S / 32]`: ConvNeXt, and SAM's unshuffled neck if used.

        `alpha` is the normalised mask `[batch, 1, S, S]`, read only when `slow_path_reads_mask`.
        """
        if self.slow_path_reads_mask and alpha is None:
            raise ValueError("the slow path reads the mask (slow_mask_embedding): give alpha")
        pixel_values = pixel_values.to(self.fast_mask_embed.weight.dtype)
        stem_mask = self.slow_mask_embed(alpha.to(pixel_values.dtype)) if self.slow_path_reads_mask else None
        slow_map = self.slow_tower(pixel_values, stem_mask)
        if self.sam_tower is None:
            return slow_map
        sam_map = self.sam_tower(self.sam_pixels(pixel_values), return_dict=True).last_hidden_state
        sam_map = F.pixel_unshuffle(sam_map, sam_map.shape[-1] // slow_map.shape[-1])
        return torch.cat([slow_map, sam_map.to(slow_map.dtype)], dim=1)

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_values: torch.Tensor | None = None,
        slow_map: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutput:
        """`[batch, 3, S, S]` pixels and `[batch, 1, S, S]` masks -> `last_hidden_state` `[batch, fast_grid ** 2,
        clip_dim]`; with `output_hidden_states`/`output_attentions`, the CLIP layers' (their input, then each layer's
        output, before the adapter that may follow it) and their attention weights (eager attention).

        `slow_map` `[batch, slow_channels, S / 32, S / 32]`: the `slow_features` of these pixels, computed once per
        image and reused for each of its masks (only valid while the slow path does not read the mask).
        """
        # The tower may run in another dtype than the language model (fp32 beside an fp16 or 4-bit LLM).
        pixel_values = pixel_values.to(self.fast_mask_embed.weight.dtype)
        alpha = self.normalize_mask(mask_values, pixel_values)
        if slow_map is None:
            slow_map = self.slow_features(pixel_values, alpha)
        elif self.slow_path_reads_mask:
            raise ValueError("the slow path reads the mask (slow_mask_embedding): its map cannot be shared")

        fast_size = (self.config.fast_image_size,) * 2
        fast_pixels = F.interpolate(pixel_values.float(), size=fast_size, mode="bilinear", align_corners=True)
        fast_alpha = F.interpolate(alpha.float(), size=fast_size, mode="bilinear", align_corners=True)
        fast_tokens = self.fast_tower.embed(
            fast_pixels.to(pixel_values.dtype), self.fast_mask_embed(fast_alpha.to(pixel_values.dtype))
        )

        # CLIP's layers in 4 groups (the config checks num_hidden_layers % 4), an MR-Adapter after each of the first 3.
        layers = self.fast_tower.encoder.layers
        group = len(layers) // 4
        for index, layer in enumerate(layers):
            fast_tokens = layer(fast_tokens, None)
            if (index + 1) % group == 0 and index + 1 < len(layers):
                fast_tokens = self.adapters[index // group](fast_tokens, slow_map)
        return BaseModelOutput(last_hidden_state=self.fusion(fast_tokens, slow_map))


class FineCaptionMultiModalProjector(nn.Module):
    """LLaVA's `mlp2x_gelu` projector: `[..., clip_dim]` -> `[..., text_hidden]`."""

    def __init__(self, config: FineCaptionConfig):
        super().__init__()
        text_hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, text_hidden)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class FineCaptionModel(FineCaptionPreTrainedModel):
    """Vision tower, projector and the bare LLaMA decoder; image features replace the `<image>` tokens."""

    def __init__(self, config: FineCaptionConfig):
        super().__init__(config)
        self.vision_tower = FineCaptionVisionTower(config)
        self.multi_modal_projector = FineCaptionMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, mask_values: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithPooling:
        """Image features of `[batch, 3, S, S]` pixels and `[batch, 1, S, S]` masks, as transformers' VLMs give them:
        `pooler_output` the projected features `[batch, image_tokens, text_hidden]` (what replaces the `<image>`
        tokens), `last_hidden_state` the vision tower's tokens `[batch, image_tokens, clip_dim]`, and with
        `output_hidden_states`/`output_attentions` the CLIP layers' hidden states and attentions. `return_dict=False`
        (or the config's) gives a tuple.

        Other keyword arguments go to the vision tower: `slow_map`, its `slow_features` of the pixels when shared by
        several masks of one image (see [`FineCaptionVisionTower.forward`]).
        """
        vision_outputs = self.vision_tower(pixel_values, mask_values, return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=self.multi_modal_projector(vision_outputs.last_hidden_state),
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    def merge_image_features(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """`inputs_embeds` `[batch, seq, hidden]` with its `<image>` tokens replaced, in order, by `image_features`
        `[images, image_tokens, hidden]`."""
        image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(
            self.get_placeholder_mask(input_ids, inputs_embeds, image_features), image_features
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        mask_values: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | FineCaptionModelOutputWithPast:
        """`input_ids` `[batch, seq]` with expanded `<image>` tokens (or the keyword `inputs_embeds` `[batch, seq,
        hidden]`), `pixel_values` `[batch, 3, S, S]`, `mask_values` `[batch, 1, S, S]` -> the decoder's
        `last_hidden_state` `[batch, seq, hidden]`, and `image_outputs` when images were given. The language model's
        arguments (`inputs_embeds`, `attention_mask`, `position_ids`, `cache`, `use_cache`, ...) are keywords passed
        on to it; [`FineCaptionForConditionalGeneration.forward`] names them all, as `generate()` reads its
        signature."""
        inputs_embeds = kwargs.pop("inputs_embeds", None)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        image_outputs = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, mask_values, return_dict=True, **kwargs)
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_outputs.pooler_output)
        outputs = self.language_model(inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        return FineCaptionModelOutputWithPast(**outputs, image_outputs=image_outputs)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """`[batch, seq, hidden]` bool mask of the `<image>` positions; their count must match the features."""
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            is_image = (inputs_embeds == image_embedding).all(-1)
        else:
            is_image = input_ids == self.config.image_token_id
        images, tokens = image_features.shape[:2]
        torch_compilable_check(
            is_image.sum() == images * tokens,
            lambda: (
                f"the text holds {int(is_image.sum())} <image> tokens but the images give {images * tokens} features "
                f"({images} images x {tokens} tokens): expand each <image> with FineCaptionProcessor"
            ),
        )
        return is_image.unsqueeze(-1).expand_as(inputs_embeds)

    image_token_mask = get_placeholder_mask  # the name before transformers' `get_placeholder_mask`


class FineCaptionForConditionalGeneration(FineCaptionPreTrainedModel, GenerationMixin):
    """FineCaption with a language-modelling head: captions the region under a mask."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # As LLaVA: the head is sharded column-wise with its output gathered, matching the language model's plan, which
    # shards `embed_tokens` (tied to the head when `tie_word_embeddings`): both sharded or neither.
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: FineCaptionConfig):
        super().__init__(config)
        self.model = FineCaptionModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_image_features(self, *args, **kwargs: Unpack[TransformersKwargs]) -> tuple | BaseModelOutputWithPooling:
        """[`FineCaptionModel.get_image_features`] (same arguments): `pooler_output` the projected features
        `[batch, image_tokens, text_hidden]`."""
        return self.model.get_image_features(*args, **kwargs)

    def caption_regions(self, processor, image, masks, prompts, **kwargs) -> list:
        """Captions of many masks of an image, one or more prompts each, with the vision work and the prompt prefill
        shared between them (see `finecaption_plugin.region_captioning`); greedy outputs equal the plain path's.

        `image` a PIL image (or a list, with `masks` and `prompts` per image), `masks` bool `[H, W]` arrays (or any
        `load_mask` form, None: the whole image), `prompts` a question for every mask or one entry per mask (a
        question or a list of them). Keyword arguments: `share`, `batch_size`, `system_prompt`, and `generate`'s.
        """
        from .region_captioning import caption_regions

        return caption_regions(self, processor, image, masks, prompts, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", _PAST_KEY_VALUES_REMOVED_IN, new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        mask_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | FineCaptionCausalLMOutputWithPast:
        """`input_ids` `[batch, seq]` with expanded `<image>` tokens, `pixel_values` `[batch, 3, S, S]`,
        `mask_values` `[batch, 1, S, S]` in [0, 1] (None: the whole image) -> logits `[batch, seq, vocab]`, and
        `image_outputs` (see `get_image_features`) when images were given. `return_dict=False` gives a tuple."""
        outputs = self.model(
            input_ids,
            pixel_values,
            mask_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return FineCaptionCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )


__all__ = [
    "FineCaptionCausalLMOutputWithPast",
    "FineCaptionForConditionalGeneration",
    "FineCaptionModel",
    "FineCaptionModelOutputWithPast",
    "FineCaptionPreTrainedModel",
    "FineCaptionVisionTower",
    "FineCaptionMRAdapter",
]
