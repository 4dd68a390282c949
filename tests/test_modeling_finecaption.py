"""FineCaption as a transformers model: Auto loading, mask branch identity, batched generation, adapters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from reference_llava_hr import mr_adapter
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import finecaption_plugin  # noqa: F401  (registers the Auto classes)
from finecaption_plugin import FineCaptionConfig, FineCaptionForConditionalGeneration
from finecaption_plugin.modeling_finecaption import FineCaptionMRAdapter, align_to_grid


def random_image(seed: int, width: int = 150, height: int = 100) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def per_channel(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(3, 1, 1)


def chat_prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()


def test_auto_classes_load_the_tiny_checkpoint(tiny_checkpoint, model, processor):
    config = AutoConfig.from_pretrained(tiny_checkpoint)
    assert type(config).__name__ == "FineCaptionConfig"
    assert isinstance(model, FineCaptionForConditionalGeneration)
    assert type(processor).__name__ == "FineCaptionProcessor"
    assert processor.num_image_tokens == config.num_image_tokens == 16
    assert processor.tokenizer.padding_side == "left"
    # transformers 5 re-initialises modules on load; the zero-init parts must stay zero (identity at start).
    tower = model.model.vision_tower
    for adapter in tower.adapters:
        assert not adapter.slow_proj.weight.any() and not adapter.fast_proj.weight.any()
    assert not tower.fast_mask_embed.weight.any()


def test_mask_branch_parameters_carry_mask_in_their_names():
    config = FineCaptionConfig.from_preset("tiny", slow_mask_embedding=True)
    model = FineCaptionForConditionalGeneration(config)
    mask_names = [name for name, _ in model.named_parameters() if "mask" in name]
    assert mask_names == ["model.vision_tower.fast_mask_embed.weight", "model.vision_tower.slow_mask_embed.weight"]
    assert all(not parameter.any() for name, parameter in model.named_parameters() if "mask" in name)


@pytest.mark.parametrize("layer_scale", [None, 1.0])
def test_convnext_layer_scale_starts_at_the_configured_value_and_survives_a_reload(layer_scale, tmp_path):
    options = {} if layer_scale is None else {"slow_layer_scale_init": layer_scale}
    model = FineCaptionForConditionalGeneration(FineCaptionConfig.from_preset("tiny", **options))
    gammas = [block.gamma for stage in model.model.vision_tower.slow_tower.stages for block in stage.blocks]
    assert len(gammas) == sum(model.config.slow_depths)
    expected = 1e-6 if layer_scale is None else layer_scale  # ConvNeXt's own 1e-6 unless told otherwise
    assert all(torch.equal(gamma, torch.full_like(gamma, expected)) for gamma in gammas)
    model.save_pretrained(tmp_path)
    reloaded = FineCaptionForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config.slow_layer_scale_init == expected
    block = reloaded.model.vision_tower.slow_tower.stages[0].blocks[0]
    assert torch.equal(block.gamma, gammas[0])


def test_save_and_reload_gives_identical_logits(model, processor, tmp_path):
    inputs = processor(text=[chat_prompt(processor, "Describe the region.")], images=[random_image(0)],
                       masks=[box_mask(150, 100, (10, 10, 80, 60))], return_tensors="pt")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    reloaded_inputs = AutoProcessor.from_pretrained(tmp_path)(
        text=[chat_prompt(processor, "Describe the region.")], images=[random_image(0)],
        masks=[box_mask(150, 100, (10, 10, 80, 60))], return_tensors="pt",
    )
    for key in inputs:
        torch.testing.assert_close(inputs[key], reloaded_inputs[key], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reloaded(**inputs).logits, rtol=0, atol=0)


def _logits_for_masks(model, processor, masks):
    prompt = chat_prompt(processor, "Describe the region.")
    image = random_image(1)
    outputs = []
    with torch.no_grad():
        for mask in masks:
            inputs = processor(text=[prompt], images=[image], masks=[mask], return_tensors="pt")
            outputs.append(model(**inputs).logits)
    return outputs


@pytest.mark.parametrize("slow_mask_embedding", [False, True], ids=["clip-mask", "clip-and-convnext-stem-masks"])
def test_zero_mask_branch_is_an_exact_identity(tiny_checkpoint, processor, slow_mask_embedding):
    # The checkpoint has no stem mask conv: loading must initialise it to zero.
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, slow_mask_embedding=slow_mask_embedding)
    tower = model.eval().model.vision_tower
    assert (tower.slow_mask_embed is not None) == slow_mask_embedding
    with torch.no_grad():  # open the adapters, so the slow map reaches the fast tokens too, not only the fusion
        for adapter in tower.adapters:
            adapter.slow_proj.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    masks = [None, box_mask(150, 100, (0, 0, 40, 30)), box_mask(150, 100, (60, 20, 150, 100))]
    first, *others = _logits_for_masks(model, processor, masks)
    for logits in others:
        torch.testing.assert_close(logits, first, rtol=0, atol=0)


def test_trained_mask_branch_tells_masks_apart(model, processor):
    trained = copy.deepcopy(model)
    with torch.no_grad():
        trained.model.vision_tower.fast_mask_embed.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    left, right, whole = _logits_for_masks(
        trained, processor, [box_mask(150, 100, (0, 0, 40, 30)), box_mask(150, 100, (60, 20, 150, 100)), None]
    )
    assert (left - right).abs().max() > 1e-3
    assert (left - whole).abs().max() > 1e-3


def test_slow_mask_embedding_reaches_the_features():
    config = FineCaptionConfig.from_preset("tiny", slow_mask_embedding=True)
    torch.manual_seed(0)
    model = FineCaptionForConditionalGeneration(config).eval()
    tower = model.model.vision_tower
    with torch.no_grad():
        for adapter in tower.adapters:  # open the adapters so slow features reach the fast tokens
            adapter.slow_proj.weight.normal_(0, 0.2)
        tower.slow_mask_embed.weight.normal_(0, 0.5)
        pixels = torch.randn(1, 3, 128, 128)
        inside = torch.zeros(1, 1, 128, 128)
        inside[..., :64, :64] = 1
        masked, whole = model.get_image_features(pixels, inside), model.get_image_features(pixels)
        assert (masked.pooler_output - whole.pooler_output).abs().max() > 1e-4


def test_image_features_shape_and_sam_variant():
    for overrides in ({}, {"use_sam_tower": True}):
        config = FineCaptionConfig.from_preset("tiny", **overrides)
        model = FineCaptionForConditionalGeneration(config).eval()
        with torch.no_grad():
            features = model.get_image_features(torch.randn(2, 3, 128, 128), torch.ones(2, 1, 128, 128)).pooler_output
        assert features.shape == (2, config.num_image_tokens, config.text_config.hidden_size)
    assert config.slow_channels == config.slow_dims[-1] + 4 * config.sam_config.output_channels


def test_sam_tower_reads_pixels_in_sams_own_normalisation():
    model = FineCaptionForConditionalGeneration(FineCaptionConfig.from_preset("tiny", use_sam_tower=True)).eval()
    seen = []
    model.model.vision_tower.sam_tower.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    rgb = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        model.get_image_features((rgb - per_channel(OPENAI_CLIP_MEAN)) / per_channel(OPENAI_CLIP_STD))
    # facebook/sam-vit-large's processor: ImageNet statistics on [0, 1] pixels.
    sam_pixels = (rgb - per_channel([0.485, 0.456, 0.406])) / per_channel([0.229, 0.224, 0.225])
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], sam_pixels)


def test_batched_left_padded_generation_equals_one_by_one(model, processor):
    prompts = [
        chat_prompt(processor, "Describe the region."),
        chat_prompt(processor, "What is the color of the masked object? Answer in one sentence, with detail."),
        chat_prompt(processor, "Shape?"),
    ]
    images = [random_image(seed) for seed in (2, 3, 4)]
    masks = [box_mask(150, 100, (5, 5, 50, 50)), None, box_mask(150, 100, (70, 30, 140, 90))]
    trained = copy.deepcopy(model)
    with torch.no_grad():  # a non-zero mask branch, so the masks matter in this comparison too
        trained.model.vision_tower.fast_mask_embed.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    batch = processor(text=prompts, images=images, masks=masks, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, 0] == 0).any(), "prompts of different lengths must be left-padded"
    settings = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        batched = trained.generate(**batch, **settings)
        for row, (prompt, image, mask) in enumerate(zip(prompts, images, masks, strict=True)):
            single_inputs = processor(text=[prompt], images=[image], masks=[mask], return_tensors="pt")
            single = trained.generate(**single_inputs, **settings)
            torch.testing.assert_close(batched.logits[0][row], single.logits[0][0], rtol=0, atol=1e-4)
            new_tokens = single.sequences[0, single_inputs["input_ids"].shape[1]:]
            batched_tokens = batched.sequences[row, batch["input_ids"].shape[1]:][: len(new_tokens)]
            assert torch.equal(batched_tokens, new_tokens)


def test_labels_give_a_loss_and_gradients_reach_every_trainable_part(model, processor):
    trained = copy.deepcopy(model).train()
    trained.activation_checkpointing_enable()
    inputs = processor(text=[chat_prompt(processor, "Describe.") + "a red car"], images=[random_image(5)],
                       masks=[box_mask(150, 100, (5, 5, 50, 50))], return_tensors="pt")
    output = trained(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(output.loss)
    output.loss.backward()
    tower = trained.model.vision_tower
    for part in (tower.fast_mask_embed, tower.adapters[0].slow_proj, trained.model.multi_modal_projector.linear_1):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides", [{}, {"use_sam_tower": True, "slow_mask_embedding": True}], ids=["base", "all"])
def test_full_finetune_gives_every_trainable_parameter_a_gradient(overrides):
    # DDP with find_unused_parameters=False fails on a trainable parameter that the forward never reaches.
    from finecaption_plugin.lora import PARTS, set_trainable

    config = FineCaptionConfig.from_preset("tiny", **overrides)
    model = FineCaptionForConditionalGeneration(config).train()
    counts = set_trainable(model, set(PARTS), upcast=False)
    assert counts["vision"] and counts["language"]
    input_ids = torch.tensor([[5] + [config.image_token_id] * config.num_image_tokens + [6, 7]])
    loss = model(
        input_ids=input_ids,
        pixel_values=torch.randn(1, 3, 128, 128),
        mask_values=(torch.rand(1, 1, 128, 128) > 0.5).float(),
        labels=input_ids,
    ).loss
    loss.backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    # CLIP's CLS embedding, dropped by LLaVA-HR, stays in checkpoints but is no parameter.
    assert "model.vision_tower.fast_tower.embeddings.class_embedding" in model.state_dict()


def test_sdpa_and_eager_attention_agree(tiny_checkpoint, processor):
    inputs = processor(text=[chat_prompt(processor, "Describe.")], images=[random_image(6)], return_tensors="pt")
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, attn_implementation=implementation)
        with torch.no_grad():
            logits[implementation] = model.eval()(**inputs).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-4, atol=1e-4)


def test_image_token_count_mismatch_is_a_clear_error(model):
    input_ids = torch.tensor([[5, model.config.image_token_id, 6]])
    with pytest.raises(ValueError, match="1 <image> tokens but the images give 16 features"):
        model(input_ids=input_ids, pixel_values=torch.zeros(1, 3, 128, 128))


@pytest.mark.parametrize("slow_side", [2, 4, 8])
def test_mr_adapter_matches_the_design_formula(slow_side):
    torch.manual_seed(slow_side)
    adapter = FineCaptionMRAdapter(fast_dim=16, slow_dim=24)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0, 0.3)
    fast_tokens, slow_map = torch.randn(2, 16, 16), torch.randn(2, 24, slow_side, slow_side)
    with torch.no_grad():
        expected = mr_adapter(dict(adapter.named_parameters()), fast_tokens, slow_map)
        torch.testing.assert_close(adapter(fast_tokens, slow_map), expected)


def test_mr_adapters_start_as_the_identity():
    model = FineCaptionForConditionalGeneration(FineCaptionConfig.from_preset("tiny"))
    fast_tokens, slow_map = torch.randn(2, 16, 32), torch.randn(2, 32, 4, 4)
    for adapter in model.model.vision_tower.adapters:
        with torch.no_grad():
            torch.testing.assert_close(adapter(fast_tokens, slow_map), fast_tokens, rtol=0, atol=0)


def test_align_to_grid_upsamples_bilinearly_and_pools_down():
    feature_map = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    up = align_to_grid(feature_map, 4)
    assert up.shape == (2, 16, 3)
    torch.testing.assert_close(up[:, 0], feature_map[:, :, 0, 0])  # align_corners keeps the corners
    torch.testing.assert_close(up[:, -1], feature_map[:, :, -1, -1])
    down = align_to_grid(torch.ones(1, 3, 8, 8), 2)
    torch.testing.assert_close(down, torch.ones(1, 4, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_generation(tiny_checkpoint, processor, dtype):
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=dtype).eval()
    language_dtype = model.model.language_model.embed_tokens.weight.dtype
    vision_dtype = model.model.vision_tower.fast_mask_embed.weight.dtype
    assert language_dtype == dtype
    assert vision_dtype == (torch.float32 if dtype == torch.float16 else dtype)  # fp16 keeps the vision side fp32
    inputs = processor(text=[chat_prompt(processor, "Describe.")], images=[random_image(7)], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def test_meta_device_shapes_of_the_full_model():
    config = FineCaptionConfig.from_preset("finecaption-8b")
    from finecaption_plugin.modeling_finecaption import FineCaptionForConditionalGeneration

    with torch.device("meta"):
        model = FineCaptionForConditionalGeneration(config)
        features = model.get_image_features(torch.empty(1, 3, 1024, 1024), torch.empty(1, 1, 1024, 1024)).pooler_output
    assert features.shape == (1, 1024, 4096)
    assert model.model.vision_tower.fast_mask_embed.weight.shape == (1024, 1, 14, 14)
    assert model.lm_head.weight.shape == (128257, 4096)


def test_device_map_auto_keeps_the_vision_tower_whole_and_runs(tiny_checkpoint):
    from accelerate import infer_auto_device_map

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, device_map="auto")
    input_ids = torch.tensor([[0, 4, 5, 6]])
    assert model(input_ids=input_ids).logits.shape == (1, 4, model.config.text_config.vocab_size)
    # Spread over CPU and disk, the language model splits by decoder layer but the vision tower stays in one piece.
    size = sum(p.numel() * 4 for p in model.parameters())
    device_map = infer_auto_device_map(
        model, max_memory={"cpu": size * 9 // 10, "disk": size * 2}, no_split_module_classes=model._no_split_modules
    )
    assert len(set(device_map.values())) > 1
    assert not [name for name in device_map if name.startswith("model.vision_tower.")]
