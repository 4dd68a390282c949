"""FineCaption against transformers' own common model tests (issue 11).

Each test is modelled on the test of the same name (or the one named in its docstring) in transformers'
`tests/test_modeling_common.py` / `tests/test_configuration_common.py` (source distribution of the installed
version; its wheel ships no tests), run on the tiny preset the way `tests/models/llava` runs them on LLaVA.
"""

from __future__ import annotations

import collections
import copy
import inspect
import logging
import time
import typing
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from transformers import PreTrainedModel, set_seed
from transformers.cache_utils import DynamicCache
from transformers.distributed.parallel_utils import _get_parameter_plan
from transformers.generation import CompileConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPAttention
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils import logging as transformers_logging
from transformers.utils.generic import ModelOutput

from finecaption_plugin import FineCaptionConfig, FineCaptionForConditionalGeneration
from finecaption_plugin.modeling_finecaption import (
    FineCaptionCausalLMOutputWithPast,
    FineCaptionModel,
    FineCaptionModelOutputWithPast,
)

MODEL_CLASSES = (FineCaptionModel, FineCaptionForConditionalGeneration)
BATCH = 2


def tiny_config(**overrides) -> FineCaptionConfig:
    return FineCaptionConfig.from_preset("tiny", **overrides)


def image_inputs(config: FineCaptionConfig, batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    side = config.image_size
    return {
        "pixel_values": torch.randn(batch, 3, side, side, generator=generator),
        "mask_values": (torch.rand(batch, 1, side, side, generator=generator) > 0.5).float(),
    }


def model_inputs(config: FineCaptionConfig, batch: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    image_tokens = [config.image_token_id] * config.num_image_tokens
    input_ids = torch.tensor([[5 + row] + image_tokens + [6, 7 + row, 8] for row in range(batch)])
    return {"input_ids": input_ids, **image_inputs(config, batch, seed)}


def open_mask_branch(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random mask convolutions and adapter projections (zero at init), so the mask and the slow path matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "mask_embed" in name or ".slow_proj." in name or ".fast_proj." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


@contextmanager
def seeded_weight_init():
    """test_modeling_common.seeded_weight_init: the same seed before each module's init, on both paths."""
    original = PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        set_seed(42)
        original(*args, **kwargs)

    PreTrainedModel._initialize_weights = seeded
    try:
        yield
    finally:
        PreTrainedModel._initialize_weights = original


@contextmanager
def skip_weight_init():
    """test_modeling_common.skip_weight_init: modules keep what their `__init__` made."""
    original = PreTrainedModel._initialize_weights
    PreTrainedModel._initialize_weights = lambda *args, **kwargs: None
    try:
        yield
    finally:
        PreTrainedModel._initialize_weights = original


@contextmanager
def transformers_warnings():
    """The warnings transformers logs (its logger does not propagate to pytest's caplog)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = transformers_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# -- get_image_features ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("return_dict", [True, False, None])
def test_get_image_features_output(return_dict):
    config = tiny_config()
    if return_dict is not None:
        config.return_dict = return_dict
    for model_class in MODEL_CLASSES:
        model = model_class(copy.deepcopy(config)).eval()
        with torch.no_grad():
            outputs = model.get_image_features(**image_inputs(config))
        if return_dict is False:
            assert isinstance(outputs, tuple)
            continue
        assert isinstance(outputs, BaseModelOutputWithPooling) and isinstance(outputs, ModelOutput)
        assert outputs.last_hidden_state.shape == (BATCH, config.num_image_tokens, config.vision_config.hidden_size)
        assert outputs.pooler_output.shape == (BATCH, config.num_image_tokens, config.text_config.hidden_size)
        assert outputs.hidden_states is None and outputs.attentions is None  # only when asked for


def test_get_image_features_pooler_output():
    """One 2-D entry per image in `pooler_output` (the layout generation assumes), and it is exactly what the model
    puts in place of the `<image>` tokens."""
    config = tiny_config()
    model = open_mask_branch(FineCaptionForConditionalGeneration(config))
    inputs = model_inputs(config)
    with torch.no_grad():
        pooler_output = model.get_image_features(inputs["pixel_values"], inputs["mask_values"]).pooler_output
        direct = model.model.multi_modal_projector(model.model.vision_tower(**image_inputs(config)).last_hidden_state)
        output = model(**inputs)
    assert len(pooler_output) == BATCH and pooler_output[0].ndim == 2
    torch.testing.assert_close(pooler_output, direct, rtol=0, atol=0)
    torch.testing.assert_close(output.image_outputs.pooler_output, pooler_output, rtol=0, atol=0)


def _set_on_all_configs(config, key, value):
    setattr(config, key, value)
    for sub_key in config.sub_configs:
        if (sub_config := getattr(config, sub_key)) is not None:
            _set_on_all_configs(sub_config, key, value)


def test_get_image_features_hidden_states():
    config = tiny_config()
    expected = config.vision_config.num_hidden_layers + 1  # the first layer's input, then each layer's output
    model = open_mask_branch(FineCaptionForConditionalGeneration(copy.deepcopy(config)))
    inputs = image_inputs(config)
    with torch.no_grad():
        plain = model.get_image_features(**inputs)
        asked = model.get_image_features(**inputs, output_hidden_states=True)
    # _check_features_ignore_output_hidden_states: the features do not depend on the request
    torch.testing.assert_close(plain.pooler_output, asked.pooler_output, rtol=0, atol=0)
    torch.testing.assert_close(plain.last_hidden_state, asked.last_hidden_state, rtol=0, atol=0)
    assert len(asked.hidden_states) == expected
    width = config.vision_config.hidden_size
    assert all(h.shape == (BATCH, config.num_image_tokens, width) for h in asked.hidden_states)
    # The first is the embedded patches (fast tower embed), the second the first CLIP layer's output.
    with torch.no_grad():
        tower = model.model.vision_tower
        first_layer = tower.fast_tower.encoder.layers[0](asked.hidden_states[0], None)
    torch.testing.assert_close(asked.hidden_states[1], first_layer)

    _set_on_all_configs(config, "output_hidden_states", True)  # ... and through the config
    model = FineCaptionForConditionalGeneration(config).eval()
    with torch.no_grad():
        assert len(model.get_image_features(**inputs).hidden_states) == expected


def test_get_image_features_attentions():
    config = tiny_config()
    vision = config.vision_config
    model = FineCaptionForConditionalGeneration(copy.deepcopy(config)).eval()
    model.set_attn_implementation("eager")
    inputs = image_inputs(config)
    with torch.no_grad():
        outputs = model.get_image_features(**inputs, output_hidden_states=False, output_attentions=True)
    tokens = config.num_image_tokens
    assert len(outputs.attentions) == vision.num_hidden_layers
    assert all(a.shape == (BATCH, vision.num_attention_heads, tokens, tokens) for a in outputs.attentions)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(BATCH, vision.num_attention_heads, tokens))

    _set_on_all_configs(config, "output_attentions", True)  # ... and through the config
    model = FineCaptionForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        assert len(model.get_image_features(**inputs).attentions) == vision.num_hidden_layers


# -- model outputs ----------------------------------------------------------------------------------------------------


def test_model_outputs_carry_the_image_outputs():
    """LlavaModelOutputWithPast / LlavaCausalLMOutputWithPast: `image_outputs` (and `image_hidden_states`)."""
    config = tiny_config()
    model = open_mask_branch(FineCaptionForConditionalGeneration(config))
    inputs = model_inputs(config)
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], inputs["mask_values"])
        output = model(**inputs, output_hidden_states=True)
        base_output = model.model(**inputs)
        text_only = model(input_ids=torch.tensor([[5, 6, 7]]))
    assert isinstance(output, FineCaptionCausalLMOutputWithPast)
    assert isinstance(base_output, FineCaptionModelOutputWithPast)
    for out in (output, base_output):
        torch.testing.assert_close(out.image_outputs.pooler_output, features.pooler_output, rtol=0, atol=0)
        torch.testing.assert_close(out.image_hidden_states, features.pooler_output, rtol=0, atol=0)
        torch.testing.assert_close(out.image_outputs.last_hidden_state, features.last_hidden_state, rtol=0, atol=0)
    # output_hidden_states reaches the language model and the vision tower alike
    assert len(output.hidden_states) == config.text_config.num_hidden_layers + 1
    assert len(output.image_outputs.hidden_states) == config.vision_config.num_hidden_layers + 1
    assert text_only.image_outputs is None and text_only.image_hidden_states is None


def test_base_model_passes_the_language_model_arguments_by_keyword():
    """FineCaptionModel.forward names only what it uses (input_ids, pixel_values, mask_values; inputs_embeds by
    keyword) and hands attention_mask, position_ids, ... to the language model: they change its output as they
    change the generation class's, and a positional fourth argument is refused instead of silently misread."""
    config = tiny_config()
    model = open_mask_branch(FineCaptionForConditionalGeneration(config)).eval()
    inputs = model_inputs(config)
    attention_mask = torch.ones_like(inputs["input_ids"])
    attention_mask[:, 0] = 0  # as a left pad
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = model.model(**inputs).last_hidden_state
        masked = model.model(**inputs, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        full = model(**inputs, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True)
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        from_embeds = model.model(
            inputs_embeds=embeds, pixel_values=inputs["pixel_values"], mask_values=inputs["mask_values"]
        ).last_hidden_state
    assert not torch.allclose(plain[:, 1:], masked[:, 1:])
    torch.testing.assert_close(masked, full.hidden_states[-1], rtol=0, atol=0)
    torch.testing.assert_close(from_embeds, plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError):
        model.model(inputs["input_ids"], inputs["pixel_values"], inputs["mask_values"], attention_mask)


def test_model_outputs_equivalence():
    """`return_dict=False` (argument or config) gives the dict output's `to_tuple()`, for both model classes."""
    config = tiny_config()
    inputs = model_inputs(config)
    for model_class in MODEL_CLASSES:
        model = open_mask_branch(model_class(copy.deepcopy(config)))
        for extra in ({}, {"output_hidden_states": True}, {"labels": inputs["input_ids"]}):
            if "labels" in extra and model_class is FineCaptionModel:
                continue
            with torch.no_grad():
                as_tuple = model(**inputs, **extra, return_dict=False)
                as_dict = model(**inputs, **extra, return_dict=True).to_tuple()
            assert isinstance(as_tuple, tuple)
            _assert_nested_equal(as_tuple, as_dict)
        model.config.return_dict = False
        with torch.no_grad():
            assert isinstance(model(**inputs), tuple)
            assert isinstance(model.get_image_features(inputs["pixel_values"]), tuple)


def _assert_nested_equal(first, second):
    if isinstance(first, (tuple, list)):
        assert isinstance(second, (tuple, list)) and len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            _assert_nested_equal(a, b)
    elif isinstance(first, torch.Tensor):
        torch.testing.assert_close(first, second, rtol=0, atol=0)
    else:
        assert type(first) is type(second)


# -- attention implementation per sub-config --------------------------------------------------------------------------


@pytest.mark.parametrize("use_sam_tower", [False, True], ids=["no-sam", "sam"])
def test_attn_implementation_composite_models(use_sam_tower, tmp_path):
    config = tiny_config(use_sam_tower=use_sam_tower)
    eager = {"": "eager", **{key: "eager" for key in config.sub_configs}}
    config._attn_implementation = eager
    with transformers_warnings() as warnings:
        model = FineCaptionForConditionalGeneration(config)
        for key in config.sub_configs:
            assert getattr(model.config, key)._attn_implementation == "eager"
        for _, module in model.named_modules():
            if type(module).__name__.endswith("Attention") and getattr(module, "config", None) is not None:
                assert module.config._attn_implementation == "eager"
        tower = model.model.vision_tower
        assert tower.fast_tower.config is model.config.vision_config
        if use_sam_tower:
            assert tower.sam_tower.config is model.config.sam_config
            assert all(type(layer.attn) is SamVisionAttention for layer in tower.sam_tower.layers)

        # Per sub-config on a built model: each reaches its own sub-model.
        model.set_attn_implementation({"vision_config": "sdpa", "text_config": "eager", "sam_config": "sdpa"})
        assert tower.fast_tower.config._attn_implementation == "sdpa"
        assert model.model.language_model.config._attn_implementation == "eager"
        assert model.config.sam_config._attn_implementation == "sdpa"
        model.set_attn_implementation("eager")
        assert {getattr(model.config, key)._attn_implementation for key in config.sub_configs} == {"eager"}

        model.save_pretrained(tmp_path)
        reloaded = FineCaptionForConditionalGeneration.from_pretrained(
            tmp_path, attn_implementation={"": "sdpa", "vision_config": "eager", "text_config": "sdpa",
                                           "sam_config": "sdpa"}
        )
    assert reloaded.model.vision_tower.fast_tower.config._attn_implementation == "eager"
    assert reloaded.model.language_model.config._attn_implementation == "sdpa"
    if use_sam_tower:
        assert all(type(layer.attn) is SamVisionSdpaAttention for layer in reloaded.model.vision_tower.sam_tower.layers)
    assert not [w for w in warnings if "without finding the associated sub-model" in w], warnings


def test_sdpa_can_dispatch_composite_models(tmp_path):
    config = tiny_config()
    FineCaptionForConditionalGeneration(config).save_pretrained(tmp_path)
    for requested, expected in ((None, "sdpa"), ("eager", "eager")):
        kwargs = {} if requested is None else {"attn_implementation": requested}
        base = FineCaptionForConditionalGeneration.from_pretrained(tmp_path, **kwargs).base_model
        tower, language_model = base.vision_tower, base.language_model
        assert isinstance(tower, PreTrainedModel) and tower._supports_sdpa and language_model._supports_sdpa
        assert tower.config._attn_implementation == language_model.config._attn_implementation == expected
        assert tower.fast_tower.config._attn_implementation == expected
    for _, module in base.named_modules():  # the eager model
        if isinstance(module, CLIPAttention):
            assert module.config._attn_implementation == "eager"


def test_eager_and_sdpa_vision_towers_agree():
    config = tiny_config(use_sam_tower=True)
    torch.manual_seed(0)
    model = open_mask_branch(FineCaptionForConditionalGeneration(config))
    inputs = model_inputs(config)
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation({"vision_config": implementation, "text_config": "sdpa"})
        with torch.no_grad():
            logits[implementation] = model(**inputs).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-4, atol=1e-4)


# -- sub-configs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "finecaption-paper"])
def test_config_from_and_save_pretrained_composite(preset, tmp_path):
    """test_configuration_common.create_and_test_config_from_and_save_pretrained_composite."""
    config = FineCaptionConfig.from_preset(preset)
    config.save_pretrained(tmp_path)
    loaded = FineCaptionConfig.from_pretrained(tmp_path)
    general = config.to_dict()
    for key, sub_class in loaded.sub_configs.items():
        sub_config = sub_class.from_pretrained(tmp_path)
        sub_dict = sub_config.to_dict()
        sub_dict.pop("transformers_version", None)
        general[key].pop("transformers_version", None)
        assert sub_dict == general[key], key
        assert isinstance(sub_config, type(getattr(loaded, key)))
        sub_folder = tmp_path / key
        sub_config.save_pretrained(sub_folder)
        assert sub_class.from_pretrained(sub_folder).to_dict() == sub_config.to_dict()


def test_sam_config_keeps_sams_saved_form(tmp_path):
    from transformers import SamVisionConfig

    config = tiny_config(use_sam_tower=True)
    assert isinstance(config.sam_config, SamVisionConfig)
    assert config.to_dict()["sam_config"]["model_type"] == "sam_vision_model"
    assert SamVisionConfig(**config.sam_config.to_dict()).to_dict() == config.sam_config.to_dict()


# -- weight initialisation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"use_sam_tower": True, "slow_mask_embedding": True}], ids=["base", "all"])
def test_can_init_all_missing_weights(overrides):
    config = tiny_config(**overrides)
    with seeded_weight_init():
        from_init = FineCaptionForConditionalGeneration(copy.deepcopy(config))
        from_pretrained = FineCaptionForConditionalGeneration.from_pretrained(
            None, config=copy.deepcopy(config), state_dict={}
        )
    on_meta = [k for k, v in [*from_pretrained.named_parameters(), *from_pretrained.named_buffers()] if v.is_meta]
    assert on_meta == []
    expected, got = from_init.state_dict(), from_pretrained.state_dict()
    assert sorted(expected) == sorted(got)
    assert [key for key in expected if not torch.equal(expected[key], got[key])] == []
    # The parts that start as the identity stay zero (transformers 5 applies _init_weights to every module).
    tower = from_pretrained.model.vision_tower
    zero = [embed.weight for embed in (tower.fast_mask_embed, tower.slow_mask_embed) if embed is not None]
    zero += [w for adapter in tower.adapters for w in (adapter.slow_proj.weight, adapter.fast_proj.weight)]
    assert not any(weight.any() for weight in zero)


def test_fast_tower_keeps_clips_own_init():
    """CLIPPreTrainedModel._init_weights' scales for the attention and MLP linears, fresh or missing."""
    config = tiny_config(vision_config={"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4})
    vision = config.vision_config
    width, layers = vision.hidden_size, vision.num_hidden_layers
    expected = {
        "self_attn.q_proj": width**-0.5 * (2 * layers) ** -0.5,
        "self_attn.out_proj": width**-0.5,
        "mlp.fc1": (2 * width) ** -0.5,
        "mlp.fc2": width**-0.5 * (2 * layers) ** -0.5,
    }
    torch.manual_seed(0)
    fresh = FineCaptionForConditionalGeneration(copy.deepcopy(config))
    missing = FineCaptionForConditionalGeneration.from_pretrained(None, config=copy.deepcopy(config), state_dict={})
    for model in (fresh, missing):
        layer = model.model.vision_tower.fast_tower.encoder.layers[0]
        for name, std in expected.items():
            assert float(layer.get_submodule(name).weight.std()) == pytest.approx(std, rel=0.1), name


def test_init_weights_can_init_buffers():
    config = tiny_config(use_sam_tower=True)
    with skip_weight_init():
        from_init = FineCaptionForConditionalGeneration(copy.deepcopy(config))
    with torch.device("meta"):
        from_meta = FineCaptionForConditionalGeneration(copy.deepcopy(config))
    from_meta.to_empty(device="cpu")
    from_meta.init_weights()
    expected, got = dict(from_init.named_buffers()), dict(from_meta.named_buffers())
    assert sorted(expected) == sorted(got)
    assert [key for key in expected if not torch.equal(expected[key], got[key])] == []
    assert "model.vision_tower.fast_tower.embeddings.class_embedding" in got


def test_can_be_initialized_on_meta():
    with torch.device("meta"):
        model = FineCaptionForConditionalGeneration(tiny_config(use_sam_tower=True, slow_mask_embedding=True))
    assert all(p.is_meta for p in model.parameters())


def test_missing_weights_stay_in_fp32_with_the_vision_tower(tiny_checkpoint):
    """Loaded in float16, the vision side stays float32 (`_keep_in_fp32_modules`), weights missing from the
    checkpoint too: CLIP's class_embedding buffer and a new ConvNeXt-stem mask convolution (still zero)."""
    from safetensors.torch import load_file

    state = load_file(next(tiny_checkpoint.glob("*.safetensors")))
    del state["model.vision_tower.fast_tower.embeddings.class_embedding"]
    config = FineCaptionConfig.from_pretrained(tiny_checkpoint, slow_mask_embedding=True)
    model = FineCaptionForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=state, dtype=torch.float16
    ).eval()
    tower = model.model.vision_tower
    class_embedding = tower.fast_tower.embeddings.class_embedding
    assert class_embedding.dtype == torch.float32 and not class_embedding.any()
    assert tower.slow_mask_embed.weight.dtype == torch.float32 and not tower.slow_mask_embed.weight.any()
    assert tower.fast_tower.embeddings.patch_embedding.weight.dtype == torch.float32
    assert model.model.language_model.embed_tokens.weight.dtype == torch.float16
    with torch.no_grad():
        assert torch.isfinite(model(**model_inputs(config, batch=1)).logits).all()


# -- deprecated keyword, tensor parallelism, tied weights, typing -----------------------------------------------------


def test_past_key_values_is_deprecated_for_cache():
    """LLaVA's `@deprecate_kwarg("past_key_values", ..., new_name="cache")`: a warning, and the cache is used."""
    config = tiny_config()
    model = FineCaptionForConditionalGeneration(config).eval()
    prompt = torch.tensor([[5, 6, 7, 8]])
    step = torch.tensor([[9]])
    for forward in (model, model.model):
        with torch.no_grad():
            cache = DynamicCache(config=config.get_text_config(decoder=True))
            forward(input_ids=prompt, cache=cache, use_cache=True)
            expected = forward(input_ids=step, cache=cache, use_cache=True)[0]
            old_cache = DynamicCache(config=config.get_text_config(decoder=True))
            forward(input_ids=prompt, cache=old_cache, use_cache=True)
            with pytest.warns(FutureWarning, match="past_key_values"):
                got = forward(input_ids=step, past_key_values=old_cache, use_cache=True)[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert old_cache.get_seq_length() == 5


def test_tp_plan_matches_params():
    model = FineCaptionForConditionalGeneration(tiny_config())
    names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    modules = {name for name, _ in model.named_modules()}
    assert model.tp_plan
    unused = {
        pattern
        for pattern in model.tp_plan
        if not any(_get_parameter_plan(name, {pattern: ""}, is_weight=True) is not None for name in names)
        and not any(_get_parameter_plan(name, {pattern: ""}, is_weight=False) is not None for name in modules)
    }
    assert unused == set()


def test_tied_weights_are_sharded_together():
    model = FineCaptionForConditionalGeneration(tiny_config())
    names = {module: name for name, module in model.named_modules()}
    head, embedding = names[model.get_output_embeddings()], names[model.get_input_embeddings()]
    assert f"{head}.weight" in model._tied_weights_keys
    assert (head in model.tp_plan) == (embedding in model.tp_plan)
    assert model.tp_plan[head] == "colwise_gather_output"  # LLaVA's


def test_tied_weights_keys():
    config = tiny_config()
    config.get_text_config().tie_word_embeddings = True
    config.tie_word_embeddings = True
    model = FineCaptionForConditionalGeneration(config)
    storages = collections.defaultdict(list)
    for name, tensor in model.state_dict().items():
        storages[tensor.untyped_storage().data_ptr()].append(name)
    shared = [sorted(group) for group in storages.values() if len(group) > 1]
    assert shared == [["lm_head.weight", "model.language_model.embed_tokens.weight"]]


@pytest.mark.parametrize("method", ["forward", "get_image_features"])
def test_kwargs_are_typed_as_transformers_kwargs(method):
    for model_class in MODEL_CLASSES:
        annotation = typing.get_type_hints(getattr(model_class, method))["kwargs"]
        assert annotation == Unpack[TransformersKwargs]
        assert "output_attentions" in TransformersKwargs.__annotations__
    vision_kwargs = inspect.signature(FineCaptionModel.get_image_features).parameters["kwargs"]
    assert vision_kwargs.kind is inspect.Parameter.VAR_KEYWORD


# -- static cache and torch.compile -----------------------------------------------------------------------------------


def test_can_compile_fullgraph_is_declared():
    assert FineCaptionForConditionalGeneration._can_compile_fullgraph
    assert FineCaptionModel._can_compile_fullgraph


@pytest.mark.torch_compile_test
def test_static_cache_and_compiled_forward_give_the_dynamic_cache_tokens():
    """GenerationTesterMixin's static-cache and compiled-forward checks: `cache_implementation="static"`, the
    forward compiled with `fullgraph=True` (images included), and generation with compiled decoding steps all give
    the dynamic cache's greedy tokens. CPU: the tiny preset, `aot_eager` for the whole forward."""
    start = time.monotonic()
    torch.compiler.reset()
    config = tiny_config()
    torch.manual_seed(0)
    model = open_mask_branch(FineCaptionForConditionalGeneration(config))
    model.generation_config.pad_token_id = config.pad_token_id
    inputs = model_inputs(config)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][1, 0] = 0  # left padding on the second row
    settings = dict(max_new_tokens=5, do_sample=False, min_new_tokens=5)
    with torch.no_grad():
        dynamic = model.generate(**inputs, **settings)
        static = model.generate(**inputs, cache_implementation="static", **settings)
        assert torch.equal(static, dynamic)

        eager_logits = model(**inputs).logits
        compiled_forward = torch.compile(model.forward, fullgraph=True, backend="aot_eager", dynamic=False)
        compiled_logits = compiled_forward(**inputs).logits
        torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-5, atol=1e-5)

        compile_config = CompileConfig(fullgraph=True, dynamic=False, backend="aot_eager", mode=None)
        compile_config._compile_all_devices = True  # generate compiles the decoding steps on CPU too
        compiled = model.generate(**inputs, cache_implementation="static", compile_config=compile_config, **settings)
    assert getattr(model, "_compiled_call", None) is not None  # the decoding steps ran through torch.compile
    assert torch.equal(compiled, dynamic)
    assert time.monotonic() - start < 120


def test_embedding_accessors_are_transformers_own():
    """The input/output embedding accessors come from `PreTrainedModel` (no hand-written copies) and reach the
    language model's `embed_tokens` and the head, so `resize_token_embeddings` resizes both."""
    model = FineCaptionForConditionalGeneration(tiny_config())
    embed = model.model.language_model.embed_tokens
    assert model.get_input_embeddings() is embed and model.model.get_input_embeddings() is embed
    assert model.get_output_embeddings() is model.lm_head
    replacement = nn.Embedding(embed.num_embeddings, embed.embedding_dim)
    model.set_input_embeddings(replacement)
    assert model.model.language_model.embed_tokens is replacement
    vocab = embed.num_embeddings
    model.resize_token_embeddings(vocab + 8)
    assert model.get_input_embeddings().num_embeddings == vocab + 8
    assert model.lm_head.out_features == vocab + 8
    assert model.config.get_text_config().vocab_size == vocab + 8
