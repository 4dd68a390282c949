"""Presets and `finecaption info` / `create-tiny`: full-size shapes checked on the meta device, never allocated."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText

import finecaption_plugin  # noqa: F401
from finecaption_plugin import FineCaptionConfig
from finecaption_plugin.cli import main
from finecaption_plugin.info import describe


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


def test_meta_device_shapes_of_the_full_model():
    config = FineCaptionConfig.from_preset("finecaption-8b")
    from finecaption_plugin.modeling_finecaption import FineCaptionForConditionalGeneration

    with torch.device("meta"):
        model = FineCaptionForConditionalGeneration(config)
        features = model.get_image_features(torch.empty(1, 3, 1024, 1024), torch.empty(1, 1, 1024, 1024))
    assert features.shape == (1, 1024, 4096)
    assert model.model.vision_tower.fast_mask_embed.weight.shape == (1024, 1, 14, 14)
    assert model.lm_head.weight.shape == (128257, 4096)


def test_fast_path_size_follows_llava_hr():
    assert FineCaptionConfig.from_preset("finecaption-8b", image_size=768).fast_image_size == 336
    config = FineCaptionConfig.from_preset("finecaption-8b", image_size=1536)
    assert config.fast_image_size == 672 and config.num_image_tokens == 48 * 48


def test_bad_presets_and_geometry_are_clear_errors():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        FineCaptionConfig.from_preset("nope")
    with pytest.raises(ValueError, match="multiple of 32"):
        FineCaptionConfig.from_preset("tiny", image_size=100)
    with pytest.raises(ValueError, match="multiple of 4"):
        FineCaptionConfig.from_preset("tiny", vision_config={"num_hidden_layers": 6})


def test_create_tiny_command_writes_a_loadable_checkpoint(tmp_path):
    for seed in (0, 1):
        subprocess.run(
            [sys.executable, "-m", "finecaption_plugin.cli", "create-tiny", str(tmp_path / f"s{seed}"),
             "--seed", str(seed)],
            check=True,
        )
    first, second = (AutoModelForImageTextToText.from_pretrained(tmp_path / f"s{s}") for s in (0, 1))
    weight = "model.vision_tower.fast_tower.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert (tmp_path / "s0" / "model.safetensors").is_file() and (tmp_path / "s0" / "chat_template.jinja").is_file()


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
