"""`finecaption convert --from llava-hr`: a tiny LLaVA-HR checkpoint with LLaVA-HR's exact key names becomes a
FineCaption checkpoint whose image features equal LLaVA-HR's math, written here independently with plain
torch ops on the source tensors (CLIP layers through transformers' `CLIPEncoderLayer`, ConvNeXt through timm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference_llava_hr import align, mr_adapter
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from finecaption_plugin.convert import ConversionError, convert_llava_hr

WIDTH, SLOW_DIMS, SLOW_DEPTHS, LLM_HIDDEN, VOCAB, IMAGE_SIZE, PATCH = (
    64,
    [8, 16, 24, 32],
    [1, 1, 2, 1],
    32,
    40,
    128,
    14,
)
SRC = "model.vision_tower."


def _tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", "USER", "ASSISTANT", ":", "the", "red", "car", "describe", "region", "."]
    vocab = {word: index for index, word in enumerate(words + [f"w{i}" for i in range(VOCAB - len(words))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _llava_hr_state(native_size: int, clip_prefix: str) -> dict[str, torch.Tensor]:
    """Random LLaVA-HR tensors under LLaVA-HR's key names (including the ones FineCaption drops)."""
    import timm.models.convnext as convnext

    torch.manual_seed(0)
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=WIDTH,
            intermediate_size=2 * WIDTH,
            num_hidden_layers=4,
            num_attention_heads=1,
            image_size=native_size,
            patch_size=PATCH,
            hidden_act="quick_gelu",
        )
    )
    slow = convnext.ConvNeXt(depths=SLOW_DEPTHS, dims=SLOW_DIMS, num_classes=10)
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=LLM_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            tie_word_embeddings=False,
        )
    )
    state = {}
    for key, value in clip.state_dict().items():
        state[SRC + "fast_vision_tower.vision_tower." + clip_prefix + key.removeprefix("vision_model.")] = (
            value
        )
    for key, value in slow.state_dict().items():
        state[SRC + "slow_vision_tower.vision_tower." + key] = value
    c = SLOW_DIMS[-1]
    for index in range(3):
        shapes = {
            "slow_conv.weight": (c, c, 1, 1), "slow_conv.bias": (c,), "slow_proj.weight": (WIDTH, c, 1, 1),
            "slow_proj.bias": (WIDTH,), "fast_conv.weight": (WIDTH, 1, 7, 7), "fast_conv.bias": (WIDTH,),
            "fast_proj.weight": (WIDTH, WIDTH, 1, 1), "fast_proj.bias": (WIDTH,),
            "gate.0.weight": (WIDTH // 2, 2 * WIDTH), "gate.0.bias": (WIDTH // 2,), "gate.2.weight": (1, WIDTH // 2),
            "gate.2.bias": (1,),
        }  # fmt: skip
        for name, shape in shapes.items():
            fan_in = torch.Size(shape[1:]).numel() if len(shape) > 1 else 100
            state[f"{SRC}align_stages_latent.{index}.{name}"] = torch.randn(shape) / fan_in**0.5
    for name, shape in {"fast_proj": (WIDTH, WIDTH), "slow_proj": (WIDTH, c)}.items():
        state[f"{SRC}align_stages.0.{name}.weight"] = torch.randn(shape) / shape[1] ** 0.5
        state[f"{SRC}align_stages.0.{name}.bias"] = torch.randn(shape[0])
    for index, shape in {0: (LLM_HIDDEN, WIDTH), 2: (LLM_HIDDEN, LLM_HIDDEN)}.items():
        state[f"model.mm_projector.{index}.weight"] = torch.randn(shape) / shape[1] ** 0.5
        state[f"model.mm_projector.{index}.bias"] = torch.randn(shape[0])
    state.update(llama.state_dict())
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # saved by transformers 4.3x
    # Random (not init-time) values everywhere, so every tensor matters to the comparison.
    return {key: value + 0.05 * torch.randn_like(value) for key, value in state.items()}


def _write_llava_hr(folder: Path, state: dict[str, torch.Tensor], fmt: str) -> Path:
    folder.mkdir()
    config = {
        "model_type": "llava",
        "architectures": ["LlavaLlamaForCausalLM"],
        # CLIP's heads are not in its tensors: the tower named here (a folder beside the weights) says them.
        "mm_vision_tower": "clip-tower",
        "vision_tower_slow": "convnext_large_mlp.clip_laion2b_ft_320",
        "is_multipath_encoder": True,
        "input_image_size": IMAGE_SIZE,
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": WIDTH,
        "hidden_size": LLM_HIDDEN,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "vocab_size": VOCAB,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "clip-tower").mkdir()
    (folder / "clip-tower" / "config.json").write_text(json.dumps({"hidden_size": WIDTH, "num_attention_heads": 1}))
    _tokenizer().save_pretrained(folder)
    keys = sorted(state)
    halves = [
        dict((k, state[k]) for k in keys[: len(keys) // 2]),
        dict((k, state[k]) for k in keys[len(keys) // 2 :]),
    ]
    for index, shard in enumerate(halves, 1):
        if fmt == "bin":
            torch.save(shard, folder / f"pytorch_model-0000{index}-of-00002.bin")
        else:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in shard.items()},
                folder / f"model-0000{index}-of-00002.safetensors",
            )
    return folder


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _reference_features(
    state: dict,
    clip_prefix: str,
    native_size: int,
    pixels: torch.Tensor,
    mask_weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """LLaVA-HR's image features, `[batch, tokens, llm_hidden]`, from the source tensors and `[batch, 3, S, S]` pixels.

    With `mask_weight` (Alpha-CLIP's `conv1_alpha`, `[width, 1, patch, patch]`), FineCaption's mask branch as
    Alpha-CLIP (Sun et al., CVPR 2024) feeds its alpha channel: the `[batch, 1, S, S]` 0/1 `mask` (None: the
    whole image) normalised `(m - 0.5) / 0.26`, resized to the CLIP input, patch-convolved and added to the RGB
    patch embeddings before the positions.
    """
    import timm.models.convnext as convnext

    fast_prefix = SRC + "fast_vision_tower.vision_tower." + clip_prefix

    def fast(name: str) -> torch.Tensor:
        return state[fast_prefix + name]

    slow = convnext.ConvNeXt(depths=SLOW_DEPTHS, dims=SLOW_DIMS, num_classes=10).eval()
    slow_prefix = SRC + "slow_vision_tower.vision_tower."
    slow.load_state_dict(_sub_state(state, slow_prefix))
    slow_map = slow.stages(slow.stem(pixels))

    grid = IMAGE_SIZE // 32
    fast_size = max(grid * PATCH, native_size)
    fast_pixels = F.interpolate(pixels, size=(fast_size, fast_size), mode="bilinear", align_corners=True)
    patches = F.conv2d(fast_pixels, fast("embeddings.patch_embedding.weight"), stride=PATCH)
    if mask_weight is not None:
        alpha = ((torch.ones_like(pixels[:, :1]) if mask is None else mask) - 0.5) / 0.26
        alpha = F.interpolate(alpha, size=(fast_size, fast_size), mode="bilinear", align_corners=True)
        patches = patches + F.conv2d(alpha, mask_weight, stride=PATCH)
    fast_grid, old = patches.shape[-1], native_size // PATCH
    positions = (
        fast("embeddings.position_embedding.weight")[1:].reshape(1, old, old, WIDTH).permute(0, 3, 1, 2)
    )
    if old != fast_grid:
        positions = F.interpolate(positions, size=(fast_grid, fast_grid), mode="bicubic", antialias=True)
    tokens = patches.flatten(2).transpose(1, 2) + positions.flatten(2).transpose(1, 2)
    tokens = F.layer_norm(tokens, (WIDTH,), fast("pre_layrnorm.weight"), fast("pre_layrnorm.bias"), 1e-5)

    layer_config = CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_attention_heads=1, hidden_act="quick_gelu"
    )
    for index in range(4):
        layer = CLIPEncoderLayer(layer_config).eval()
        layer.load_state_dict(_sub_state(state, f"{fast_prefix}encoder.layers.{index}."))
        tokens = layer(tokens, None)
        if index < 3:
            tokens = mr_adapter(_sub_state(state, f"{SRC}align_stages_latent.{index}."), tokens, slow_map)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, state[name + ".weight"], state[name + ".bias"])

    fused = linear(tokens, SRC + "align_stages.0.fast_proj") + linear(
        align(slow_map, fast_grid), SRC + "align_stages.0.slow_proj"
    )
    return linear(F.gelu(linear(fused, "model.mm_projector.0")), "model.mm_projector.2")


@pytest.mark.parametrize(
    ("fmt", "clip_prefix", "native_size"),
    [("bin", "vision_model.", 28), ("safetensors", "", 112)],
    ids=["bin-transformers4-keys-posresample", "safetensors-transformers5-keys-slow-upsample"],
)
def test_converted_image_features_equal_llava_hr_math(tmp_path, fmt, clip_prefix, native_size):
    from finecaption_plugin import FineCaptionForConditionalGeneration

    state = _llava_hr_state(native_size, clip_prefix)
    source = _write_llava_hr(tmp_path / "llava-hr", state, fmt)
    converted = convert_llava_hr(source, tmp_path / "finecaption")
    model = FineCaptionForConditionalGeneration.from_pretrained(converted).eval()

    config = model.config
    assert config.vision_config.num_hidden_layers == 4 and config.vision_config.hidden_size == WIDTH
    assert config.slow_depths == SLOW_DEPTHS and config.slow_dims == SLOW_DIMS
    assert config.text_config.num_hidden_layers == 2 and config.text_config.num_key_value_heads == 2
    assert config.fast_min_image_size == native_size
    torch.testing.assert_close(
        model.model.vision_tower.fast_mask_embed.weight, torch.zeros(WIDTH, 1, PATCH, PATCH)
    )

    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    mask = (torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE) > 0.5).float()
    with torch.no_grad():
        reference = _reference_features(state, clip_prefix, native_size, pixels)
        assert reference.shape == (2, (max(IMAGE_SIZE // 32 * PATCH, native_size) // PATCH) ** 2, LLM_HIDDEN)
        torch.testing.assert_close(model.get_image_features(pixels).pooler_output, reference, atol=1e-4, rtol=1e-4)
        # A zero mask branch ignores the mask.
        masked = model.get_image_features(pixels, mask).pooler_output
        torch.testing.assert_close(masked, reference, atol=1e-4, rtol=1e-4)


def test_image_token_is_added_with_a_mean_embedding(tmp_path):
    from transformers import AutoProcessor

    from finecaption_plugin import FineCaptionForConditionalGeneration

    state = _llava_hr_state(28, "")
    converted = convert_llava_hr(_write_llava_hr(tmp_path / "src", state, "bin"), tmp_path / "dst")
    model = FineCaptionForConditionalGeneration.from_pretrained(converted)
    processor = AutoProcessor.from_pretrained(converted)
    assert model.config.image_token_id == VOCAB == processor.image_token_id
    embed = model.get_input_embeddings().weight
    assert embed.shape[0] == VOCAB + 1 == model.lm_head.weight.shape[0]
    torch.testing.assert_close(embed[:VOCAB], state["model.embed_tokens.weight"])
    torch.testing.assert_close(embed[VOCAB], state["model.embed_tokens.weight"].mean(0))
    torch.testing.assert_close(model.lm_head.weight[VOCAB], state["lm_head.weight"].mean(0))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the region ."}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("USER: <image>\ndescribe the region . ASSISTANT:")


def test_alpha_clip_weights_initialise_the_mask_branch_and_enter_as_designed(tmp_path):
    from finecaption_plugin import FineCaptionForConditionalGeneration

    state = _llava_hr_state(28, "")
    source = _write_llava_hr(tmp_path / "src", state, "safetensors")
    alpha = torch.randn(WIDTH, 1, PATCH, PATCH) / PATCH
    torch.save(
        {"visual.conv1_alpha.weight": alpha, "visual.conv1.weight": torch.zeros(1)}, tmp_path / "alpha.pth"
    )
    converted = convert_llava_hr(source, tmp_path / "dst", alpha_clip=tmp_path / "alpha.pth")
    model = FineCaptionForConditionalGeneration.from_pretrained(converted).eval()
    torch.testing.assert_close(model.model.vision_tower.fast_mask_embed.weight, alpha)

    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    mask = (torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE) > 0.5).float()
    with torch.no_grad():
        masked = model.get_image_features(pixels, mask).pooler_output
        torch.testing.assert_close(
            masked, _reference_features(state, "", 28, pixels, alpha, mask), atol=1e-4, rtol=1e-4
        )
        whole = model.get_image_features(pixels).pooler_output
        torch.testing.assert_close(whole, _reference_features(state, "", 28, pixels, alpha), atol=1e-4, rtol=1e-4)
    assert (masked - whole).abs().max() > 1e-2  # the mask does reach the features

    torch.save({"visual.conv1_alpha.weight": torch.randn(WIDTH, 1, 16, 16)}, tmp_path / "wrong.pth")
    with pytest.raises(ConversionError, match=r"conv1_alpha.weight has shape \[64, 1, 16, 16\]"):
        convert_llava_hr(source, tmp_path / "dst2", alpha_clip=tmp_path / "wrong.pth")


def test_foreign_checkpoints_are_refused(tmp_path):
    state = _llava_hr_state(28, "")
    state["model.vision_tower.some_new_module.weight"] = torch.zeros(1)
    source = _write_llava_hr(tmp_path / "src", state, "bin")
    with pytest.raises(ConversionError, match="some_new_module"):
        convert_llava_hr(source, tmp_path / "dst")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ConversionError, match="not a LLaVA-HR config"):
        convert_llava_hr(source, tmp_path / "dst")


def test_convert_command(tmp_path):
    from finecaption_plugin.cli import main

    source = _write_llava_hr(tmp_path / "src", _llava_hr_state(28, ""), "bin")
    assert main(["convert", "--from", "llava-hr", str(source), str(tmp_path / "dst")]) == 0
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["model_type"] == "finecaption"


def test_clip_heads_come_from_the_named_tower_or_the_flag_never_a_guess(tmp_path):
    """Issue 12: CLIP's head count is not in its tensors; a 64-wide guess converted a checkpoint with other heads
    into a model computing different features, silently."""
    from finecaption_plugin.cli import main
    from finecaption_plugin.convert import clip_attention_heads

    large = {"mm_vision_tower": "openai/clip-vit-large-patch14-336"}
    assert clip_attention_heads(large, 1024) == 16
    assert clip_attention_heads({"mm_vision_tower": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}, 1280) == 16  # 80 wide
    with pytest.raises(ConversionError, match=r"whose width is 1024, not 768; give --clip-heads N"):
        clip_attention_heads(large, 768)  # a checkpoint borrowing the name
    with pytest.raises(ConversionError, match=r"'my/own-clip', not a tower of known shape; give --clip-heads N"):
        clip_attention_heads({"mm_vision_tower": "my/own-clip"}, 1024)
    assert clip_attention_heads({"mm_vision_tower": "my/own-clip"}, 1024, override=8) == 8  # 128-wide heads
    with pytest.raises(ConversionError, match="--clip-heads 3 does not divide CLIP's width 1024"):
        clip_attention_heads(large, 1024, override=3)

    source = _write_llava_hr(tmp_path / "src", _llava_hr_state(28, ""), "bin")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "mm_vision_tower": "my/own-clip"}))
    assert main(["convert", "--from", "llava-hr", str(source), str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    assert main(["convert", "--from", "llava-hr", str(source), str(tmp_path / "dst"), "--clip-heads", "1"]) == 0
    converted = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert converted["vision_config"]["num_attention_heads"] == 1
