"""finecaption_plugin.configuration_finecaption: the presets, their geometry and its checks."""

from __future__ import annotations

import pytest

from finecaption_plugin import FineCaptionConfig
from finecaption_plugin.configuration_finecaption import _TOY_SAM


def test_toy_presets_share_the_code_path_at_their_own_sizes():
    tiny, demo = FineCaptionConfig.from_preset("tiny"), FineCaptionConfig.from_preset("demo")
    assert (tiny.num_image_tokens, demo.num_image_tokens) == (16, 64)  # README: 128 px and 256 px images
    assert (tiny.fast_image_size, demo.fast_image_size) == (56, 112)  # image_size / 32 * 14
    assert all(getattr(c.sam_config, k) == v for k, v in _TOY_SAM.items() for c in (tiny, demo))  # one small SAM
    # grown from nothing, the demo model reads the mask in its ConvNeXt and starts that ConvNeXt's layer scale at 1
    assert (demo.slow_mask_embedding, demo.slow_layer_scale_init) == (True, 1.0)
    assert (tiny.slow_mask_embedding, tiny.slow_layer_scale_init) == (False, 1e-6)
    tiny.sam_config.hidden_size = 64  # each preset gets its own copy
    assert FineCaptionConfig.from_preset("demo").sam_config.hidden_size == 32


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
