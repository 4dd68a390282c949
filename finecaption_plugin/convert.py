"""``finecaption convert --from llava-hr SRC DST``: a LLaVA-HR checkpoint -> a FineCaption checkpoint.

The weights keep their values under FineCaption's names; the mask branch starts at zero (so the converted
model computes exactly what LLaVA-HR computed) or takes Alpha-CLIP's ``conv1_alpha`` (``--alpha-clip``).
The architecture is read from the tensors (CLIP layers, width, patch and native size; ConvNeXt depths and
dims; LLaMA layers, widths and vocabulary), so a tiny checkpoint and a released one take the same path.
What tensors cannot tell comes from LLaVA-HR's ``config.json`` (LLaMA heads, RoPE, norm epsilon), from the
CLIP tower it names (its attention heads: ``clip_attention_heads``, from a table of released towers whose width
must match the tensors, or the tower's own ``config.json`` when it names a local folder; ``--clip-heads``
overrides; a conversion that cannot settle them stops rather than guess) and from the conventions of the
towers LLaVA-HR uses (QuickGELU).
LLaVA-HR marks images with index -200 instead of a token, so ``<image>`` is added to the tokenizer and
the embeddings grow by a row initialised to the mean of the others.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FAST_SRC = "model.vision_tower.fast_vision_tower.vision_tower."
SLOW_SRC = "model.vision_tower.slow_vision_tower.vision_tower."
FAST_DST = "model.vision_tower.fast_tower."
SLOW_DST = "model.vision_tower.slow_tower."
PROJECTOR_DST = "model.multi_modal_projector."
MASK_DST = "model.vision_tower.fast_mask_embed.weight"
# Released CLIP towers by the last part of their name: (width, attention heads). The width is checked against the
# tensors, so a checkpoint that only borrows a name (or a toy one) is not given the wrong heads.
CLIP_TOWERS = {
    "clip-vit-base-patch32": (768, 12),
    "clip-vit-base-patch16": (768, 12),
    "clip-vit-large-patch14": (1024, 16),
    "clip-vit-large-patch14-336": (1024, 16),
    "clip-vit-h-14-laion2b-s32b-b79k": (1280, 16),
    "clip-vit-g-14-laion2b-s12b-b42k": (1408, 16),
    "clip-vit-bigg-14-laion2b-39b-b160k": (1664, 16),
}
_RENAMES = (
    (re.compile(r"^model\.vision_tower\.align_stages_latent\.(\d+)\."), r"model.vision_tower.adapters.\1."),
    (re.compile(r"^model\.vision_tower\.align_stages\.0\."), "model.vision_tower.fusion."),
    (re.compile(r"^model\.mm_projector\.0\."), PROJECTOR_DST + "linear_1."),
    (re.compile(r"^model\.mm_projector\.2\."), PROJECTOR_DST + "linear_2."),
    (re.compile(r"^model\.(layers|embed_tokens|norm)\."), r"model.language_model.\1."),
    (re.compile(r"^lm_head\."), "lm_head."),
)
# Tensors LLaVA-HR stores that FineCaption does not use: CLIP's post-layernorm and ConvNeXt's classifier
# (never run by LLaVA-HR), and buffers older transformers saved.
_DROPPED = re.compile(
    r"(^model\.vision_tower\.fast_vision_tower\.vision_tower\.(vision_model\.)?(post_layernorm\.|embeddings\.position_ids$))"
    r"|(^model\.vision_tower\.slow_vision_tower\.vision_tower\.(head|norm_pre)\.)"
    r"|(rotary_emb\.inv_freq$)"
)


class ConversionError(ValueError):
    """A source checkpoint that is not a LLaVA-HR checkpoint this converter understands."""


def rename_llava_hr_key(key: str) -> str | None:
    """A LLaVA-HR tensor name -> its FineCaption name; None for tensors FineCaption drops."""
    if _DROPPED.search(key):
        return None
    if key.startswith(FAST_SRC):
        return FAST_DST + key[len(FAST_SRC) :].removeprefix("vision_model.")
    if key.startswith(SLOW_SRC):
        rest = key[len(SLOW_SRC) :]
        if rest.startswith(("stem.", "stages.")):
            return SLOW_DST + rest
    for pattern, replacement in _RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    raise ConversionError(f"unexpected tensor {key!r}: not part of a LLaVA-HR checkpoint")


def rename_projector_key(key: str) -> str:
    """A projector tensor name (LLaVA's ``model.mm_projector.0.weight`` or ours) -> its name in the projector."""
    name = key if key.startswith(PROJECTOR_DST) else rename_llava_hr_key(key)
    if name is None or not name.startswith(PROJECTOR_DST):
        raise ConversionError(f"{key!r} is not a projector tensor")
    return name[len(PROJECTOR_DST) :]


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: ``*.safetensors`` or ``pytorch_model*.bin`` (``weights_only``)."""
    import torch
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    state: dict[str, torch.Tensor] = {}
    safetensors_files = sorted(folder.glob("*.safetensors"))
    bin_files = sorted(folder.glob("pytorch_model*.bin"))
    if not safetensors_files and not bin_files:
        raise ConversionError(f"{folder} holds neither *.safetensors nor pytorch_model*.bin files")
    for path in tqdm(safetensors_files or bin_files, desc=f"reading {folder.name}", unit="shard"):
        shard = (
            load_file(path) if path.suffix == ".safetensors" else torch.load(path, "cpu", weights_only=True)
        )
        state.update(shard)
    return state


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.match(key))})


def clip_attention_heads(source: dict, width: int, override: int | None = None, folder: Path | None = None) -> int:
    """CLIP's attention heads, which its tensors cannot tell: ``override`` (``--clip-heads``), else the tower that
    LLaVA-HR's config names (``mm_vision_tower``): a local folder's ``config.json``, or a released tower of
    ``CLIP_TOWERS`` of this width. Raises ``ConversionError`` when none of these settles it."""
    if override is not None:
        if override <= 0 or width % override:
            raise ConversionError(f"--clip-heads {override} does not divide CLIP's width {width}")
        return override
    name = str(source.get("mm_vision_tower") or source.get("vision_tower") or "")
    for candidate in (Path(name), (folder / name) if folder is not None and name else None):
        if candidate is not None and name and (candidate / "config.json").is_file():
            config = json.loads((candidate / "config.json").read_text())
            heads = config.get("vision_config", config).get("num_attention_heads")
            if isinstance(heads, int) and heads > 0 and width % heads == 0:
                return heads
    known = CLIP_TOWERS.get(name.rstrip("/").rsplit("/", 1)[-1].lower())
    if known is not None and known[0] == width:
        return known[1]
    reason = (
        f"it names {name!r}, whose width is {known[0]}, not {width}" if known
        else f"it names {name or 'no vision tower'!r}, not a tower of known shape"
    )  # fmt: skip
    raise ConversionError(
        f"cannot tell how many attention heads CLIP (width {width}) has: {reason}; give --clip-heads N "
        "(OpenAI's CLIP ViTs use 64-wide heads: width / 64)"
    )


def derive_config(
    state: dict[str, torch.Tensor],
    source: dict,
    image_token_id: int,
    pad_token_id: int | None,
    clip_heads: int | None = None,
    folder: Path | None = None,
):
    """The `FineCaptionConfig` of renamed tensors ``state``, with what tensors cannot tell from ``source``."""
    from finecaption_plugin import FineCaptionConfig

    patch = state[FAST_DST + "embeddings.patch_embedding.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    positions = state[FAST_DST + "embeddings.position_embedding.weight"].shape[0]
    native_grid = round((positions - 1) ** 0.5)
    if native_grid**2 + 1 != positions:
        raise ConversionError(f"CLIP has {positions} positions, not a square grid plus CLS")
    vision_config = dict(
        hidden_size=width,
        intermediate_size=state[FAST_DST + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(state, re.escape(FAST_DST) + r"encoder\.layers\.(\d+)\."),
        num_attention_heads=clip_attention_heads(source, width, clip_heads, folder),
        image_size=native_grid * patch_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    depths = [_count(state, re.escape(SLOW_DST) + rf"stages\.{i}\.blocks\.(\d+)\.") for i in range(4)]
    dims = [state[f"{SLOW_DST}stages.{i}.blocks.0.conv_dw.weight"].shape[0] for i in range(4)]

    embed = state["model.language_model.embed_tokens.weight"]
    hidden = embed.shape[1]
    heads = source.get("num_attention_heads", hidden // 128)
    head_dim = hidden // heads
    text_config = dict(
        hidden_size=hidden,
        intermediate_size=state["model.language_model.layers.0.mlp.gate_proj.weight"].shape[0],
        num_hidden_layers=_count(state, r"model\.language_model\.layers\.(\d+)\."),
        num_attention_heads=heads,
        num_key_value_heads=state["model.language_model.layers.0.self_attn.k_proj.weight"].shape[0]
        // head_dim,
        vocab_size=embed.shape[0],
        max_position_embeddings=source.get("max_position_embeddings", 4096),
        rms_norm_eps=source.get("rms_norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": float(source.get("rope_theta", 10000.0))},
        bos_token_id=source.get("bos_token_id"),
        eos_token_id=source.get("eos_token_id"),
        tie_word_embeddings=False,
    )
    image_size = int(source.get("input_image_size", 1024))
    return FineCaptionConfig(
        vision_config=vision_config,
        text_config=text_config,
        slow_depths=depths,
        slow_dims=dims,
        # timm's convnext_xxlarge uses 1e-5, its other ConvNeXts 1e-6.
        slow_norm_eps=1e-5 if "xxlarge" in str(source.get("vision_tower_slow", "")) else 1e-6,
        image_size=image_size,
        fast_min_image_size=vision_config["image_size"],
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
    )


def load_alpha_clip(path: Path, expected: torch.Size) -> torch.Tensor:
    """Alpha-CLIP's ``conv1_alpha.weight`` [width, 1, patch, patch] from a checkpoint file."""
    import torch
    from safetensors.torch import load_file

    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, "cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    keys = [key for key in state if key.endswith("conv1_alpha.weight")]
    if len(keys) != 1:
        raise ConversionError(f"--alpha-clip {path}: expected one '*conv1_alpha.weight' tensor, found {keys}")
    weight = state[keys[0]]
    if weight.shape != expected:
        raise ConversionError(
            f"--alpha-clip {path}: {keys[0]} has shape {list(weight.shape)}, the CLIP tower needs {list(expected)}"
        )
    return weight


def _grow(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean row (the embedding of a new token)."""
    import torch

    if rows <= weight.shape[0]:
        return weight
    mean = weight.float().mean(0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)])


def convert_llava_hr(
    src: str | Path,
    dst: str | Path,
    alpha_clip: str | Path | None = None,
    version: str = "vicuna_v1",
    clip_heads: int | None = None,
) -> Path:
    """Write the FineCaption checkpoint of LLaVA-HR checkpoint ``src`` to ``dst`` (model, tokenizer, processor).

    ``clip_heads``: CLIP's attention heads, when the tower the config names does not settle them.
    """
    import torch
    from transformers import AutoTokenizer

    from finecaption_plugin import (
        FineCaptionForConditionalGeneration,
        FineCaptionImageProcessor,
        FineCaptionProcessor,
    )
    from finecaption_plugin.conversation import IMAGE_TOKEN, get_template

    src, dst = Path(src), Path(dst)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{src} has no config.json")
    source = json.loads(config_path.read_text())
    if source.get("model_type") != "llava" or not source.get("vision_tower_slow"):
        raise ConversionError(
            f"{config_path}: not a LLaVA-HR config (needs model_type 'llava' and 'vision_tower_slow')"
        )
    template = get_template(version)

    state = {}
    for key, value in load_state_dict(src).items():
        name = rename_llava_hr_key(key)
        if name is not None:
            state[name] = value
    logger.info("renamed %d tensors of %s", len(state), src)

    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token  # LLaVA pads Vicuna with <unk>
    template.check_tokenizer(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    rows = max(len(tokenizer), state["model.language_model.embed_tokens.weight"].shape[0])
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        state[key] = _grow(state[key], rows)

    config = derive_config(state, source, image_token_id, tokenizer.pad_token_id, clip_heads, src)
    patch = state[FAST_DST + "embeddings.patch_embedding.weight"]
    mask_shape = torch.Size([patch.shape[0], 1, *patch.shape[2:]])
    if alpha_clip is not None:
        state[MASK_DST] = load_alpha_clip(Path(alpha_clip), mask_shape).to(patch.dtype)
    else:
        state[MASK_DST] = patch.new_zeros(mask_shape)

    with torch.device("meta"):
        model = FineCaptionForConditionalGeneration(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConversionError(f"{src}: tensors missing {missing[:8]}, unexpected {unexpected[:8]}")
    for key, tensor in expected.items():
        if tensor.shape != state[key].shape:
            raise ConversionError(
                f"{key}: shape {list(state[key].shape)}, the model needs {list(tensor.shape)}"
            )
    model.load_state_dict(state, assign=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dst)

    image_processor = FineCaptionImageProcessor(image_size=config.image_size)
    processor = FineCaptionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template.chat_template,
        num_image_tokens=config.num_image_tokens,
    )
    processor.save_pretrained(dst)
    logger.info("wrote FineCaption checkpoint %s", dst)
    return dst
