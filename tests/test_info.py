"""finecaption_plugin.info: ``finecaption info`` counts parameters per component of the parts table."""

from __future__ import annotations

import pytest
import torch

from finecaption_plugin import FineCaptionConfig
from finecaption_plugin.info import COMPONENTS, describe
from finecaption_plugin.modeling_finecaption import FineCaptionForConditionalGeneration
from finecaption_plugin.parts import COMPONENTS as TABLE
from finecaption_plugin.parts import component_of


def test_components_are_the_rows_of_the_parts_table_with_the_old_prefixes():
    assert list(COMPONENTS) == [component.name for component in TABLE]
    assert COMPONENTS == {  # what info.COMPONENTS held before the parts table
        "fast_tower": ("model.vision_tower.fast_tower.",),
        "slow_tower": ("model.vision_tower.slow_tower.",),
        "sam_tower": ("model.vision_tower.sam_tower.",),
        "mask_branch": ("model.vision_tower.fast_mask_embed.", "model.vision_tower.slow_mask_embed."),
        "adapters": ("model.vision_tower.adapters.",),
        "fusion": ("model.vision_tower.fusion.",),
        "projector": ("model.multi_modal_projector.",),
        "language_model": ("model.language_model.",),
        "lm_head": ("lm_head.",),
    }


@pytest.mark.parametrize("overrides", [{}, {"use_sam_tower": True, "slow_mask_embedding": True}], ids=["base", "all"])
def test_describe_counts_each_parameter_once_in_its_component(overrides):
    config = FineCaptionConfig.from_preset("tiny", **overrides)
    info = describe(config)
    with torch.device("meta"):
        model = FineCaptionForConditionalGeneration(config)
    expected = dict.fromkeys(COMPONENTS, 0)
    for name, param in model.named_parameters():
        expected[component_of(name).name] += param.numel()
    assert info["params"] == expected
    assert info["total_params"] == sum(param.numel() for param in model.parameters())
    assert (info["params"]["sam_tower"] > 0) == bool(overrides)
    assert info["params"]["mask_branch"] == sum(
        param.numel() for name, param in model.named_parameters() if "mask_embed" in name
    )
