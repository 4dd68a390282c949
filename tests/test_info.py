"""finecaption_plugin.info: ``finecaption info`` counts parameters per component of the parts table."""

from __future__ import annotations

import json

import pytest
import torch

from finecaption_plugin import FineCaptionConfig
from finecaption_plugin.cli import main
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


def run_info(preset: str, capsys) -> dict:
    assert main(["info", preset]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_finecaption_8b(capsys):
    info = run_info("finecaption-8b", capsys)
    assert 8.3e9 <= info["total_params"] <= 9.0e9
    assert info["image_tokens"] == 1024 and info["image_size"] == 1024 and info["fast_image_size"] == 448
    params = info["params"]
    assert sum(params.values()) == info["total_params"]
    # Analytic counts: CLIP-L/336 303.5 M (less its unused post-layernorm), ConvNeXt-L trunk 196.2 M,
    # three MR-Adapters 18.3 M, fusion 2.6 M, projector 21.0 M, LLaMA-3-8B 8.03 B (+ the <image> row).
    assert params["fast_tower"] == pytest.approx(303.5e6, rel=1e-3)
    assert params["slow_tower"] == pytest.approx(196.2e6, rel=1e-3)
    one_adapter = (1536 * 1536 + 1536) + (1536 * 1024 + 1024) + (1024 * 49 + 1024) + (1024 * 1024 + 1024) + (
        2048 * 512 + 512 + 512 + 1
    )
    assert one_adapter == pytest.approx(6.09e6, rel=1e-3) and params["adapters"] == 3 * one_adapter
    assert params["fusion"] == pytest.approx(2.62e6, rel=1e-2)
    assert params["projector"] == pytest.approx(21.0e6, rel=1e-3)
    assert params["language_model"] + params["lm_head"] == pytest.approx(8.03e9, rel=1e-3)
    assert params["mask_branch"] == 1024 * 14 * 14 and params["sam_tower"] == 0


def test_info_x_and_paper_presets():
    x = describe(FineCaptionConfig.from_preset("finecaption-x"))
    assert x["params"]["slow_tower"] == pytest.approx(843.4e6, rel=1e-3)
    assert x["image_tokens"] == 1024
    paper_config = FineCaptionConfig.from_preset("finecaption-paper")
    paper = describe(paper_config)
    assert paper_config.slow_channels == 1536 + 4 * 256
    assert paper["params"]["sam_tower"] > 300e6 and paper["image_tokens"] == 1024
