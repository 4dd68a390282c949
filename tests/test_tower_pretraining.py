"""Tower pretraining (the demo model's stand-in for pretrained Alpha-CLIP / ConvNeXt weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from finecaption_plugin.synth import ATTRIBUTE_VALUES, make_scene
from finecaption_plugin.tower_pretraining import (
    PATTERN,
    PATTERN_VALUES,
    pattern_label,
    pretrain_towers,
    probe_targets,
    region_examples,
)


def test_region_examples_show_each_entity_with_its_own_labels(processor):
    scene = make_scene(5, 0)
    examples = region_examples(5, processor, {"mask": 1.0})
    for entity in scene.entities:
        pixels, mask, labels, entity_mask = next(examples)
        assert pixels.shape[0] == 3
        assert PATTERN_VALUES[labels.pop(PATTERN)] == pattern_label(entity)
        assert {name: ATTRIBUTE_VALUES[name][i] for name, i in labels.items()} == entity.values()
        expected = processor.image_processor(Image.fromarray(scene.image), masks=entity.mask, return_tensors="pt")
        assert torch.equal(mask, expected["mask_values"][0])
        assert torch.equal(entity_mask, mask)
    assert next(examples)[2]["color"] == ATTRIBUTE_VALUES["color"].index(make_scene(5, 1).entities[0].color)


def test_region_examples_match_the_processor_in_every_style(processor):
    """The scene is processed once for all its mask-style entities: the pixels must still be what the processor
    makes of the image each entity is shown in."""
    from finecaption_plugin.visual_prompts import render_visual_prompt

    styles = {"mask": 1.0, "bbox": 1.0, "contour": 1.0}
    examples = region_examples(2, processor, styles)
    shown_styles = []
    for index in range(3):
        scene = make_scene(2, index)
        picture = Image.fromarray(scene.image)
        for entity in scene.entities:
            pixels, mask, _, entity_mask = next(examples)
            expected = {
                style: processor.image_processor(
                    picture if style == "mask" else render_visual_prompt(picture, entity.mask, style, "")[0],
                    masks=entity.mask,
                    return_tensors="pt",
                )
                for style in styles
            }
            style = next(name for name, got in expected.items() if torch.equal(pixels, got["pixel_values"][0]))
            shown_styles.append(style)
            assert torch.equal(entity_mask, expected[style]["mask_values"][0])
            assert torch.equal(mask, entity_mask if style == "mask" else torch.ones_like(entity_mask))
    assert set(shown_styles) == set(styles) and shown_styles.count("mask") > 1


def _same_colour_fraction(image: np.ndarray, mask: np.ndarray, dy: int, dx: int) -> float:
    """Among pairs of `mask` pixels (y, x), (y + dy, x + dx), the fraction whose colours in `image` are equal."""
    ys, xs = np.nonzero(mask)
    ys2, xs2 = ys + dy, xs + dx
    inside = (ys2 >= 0) & (ys2 < mask.shape[0]) & (xs2 >= 0) & (xs2 < mask.shape[1])
    ys, xs, ys2, xs2 = ys[inside], xs[inside], ys2[inside], xs2[inside]
    both = mask[ys2, xs2]
    return float(np.mean(np.all(image[ys[both], xs[both]] == image[ys2[both], xs2[both]], axis=-1)))


def test_pattern_label_names_the_direction_the_stripes_run_in():
    """Along the labelled direction a striped entity's neighbouring visible pixels keep their colour; across it
    they change every half period."""
    steps = {"striped horizontal": (0, 1), "striped vertical": (1, 0), "striped diagonal": (1, -1)}
    seen = set()
    for index in range(20):
        scene = make_scene(3, index)
        for entity in scene.entities:
            label = pattern_label(entity)
            if entity.texture != "striped":
                assert label == entity.texture
                continue
            seen.add(label)
            along = _same_colour_fraction(scene.image, entity.mask, *steps[label])
            assert along > 0.97, (index, label, along)
            for name, step in steps.items():
                if name != label:
                    assert _same_colour_fraction(scene.image, entity.mask, *step) < along - 0.05, (index, name)
    assert seen == set(steps)


def test_drawn_styles_give_no_mask_and_change_the_pixels(processor):
    masked = next(region_examples(5, processor, {"mask": 1.0}))
    drawn = next(region_examples(5, processor, {"contour": 1.0}))
    assert torch.all(drawn[1] == 1)  # no mask: the whole image
    assert not torch.all(masked[1] == 1)
    assert not torch.equal(masked[0], drawn[0])  # the contour is drawn on the image
    assert masked[2] == drawn[2]
    assert torch.equal(drawn[3], masked[1])  # the entity's own mask, for the probes' pooling only


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    from transformers import AutoProcessor

    from finecaption_plugin import FineCaptionForConditionalGeneration

    model = FineCaptionForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    return model, AutoProcessor.from_pretrained(tiny_checkpoint)


def test_pretraining_trains_the_towers_only_and_lowers_the_probe_loss(tiny_model):
    model, processor = tiny_model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = pretrain_towers(model, processor, steps=40, batch_size=8, learning_rate=3e-3, progress=False)
    assert len(losses) == 40 and all(np.isfinite(losses))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "nothing was trained"
    assert all(name.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for name in changed)
    assert any(name.startswith("model.vision_tower.fast_mask_embed") for name in changed)  # the mask is read
    assert any(name.startswith("model.multi_modal_projector.") for name in changed)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert not model.training  # the mode it was given back in (from_pretrained: eval)
    assert not model.model.vision_tower.slow_tower._forward_hooks  # the probes' hook is gone


def test_pretraining_teaches_a_mask_reading_convnext_the_mask(tiny_checkpoint, processor):
    from finecaption_plugin import FineCaptionForConditionalGeneration

    model = FineCaptionForConditionalGeneration.from_pretrained(
        tiny_checkpoint, dtype=torch.float32, slow_mask_embedding=True
    )
    assert not model.model.vision_tower.slow_mask_embed.weight.any()
    pretrain_towers(model, processor, steps=6, batch_size=4, styles={"mask": 1.0}, progress=False)
    assert model.model.vision_tower.slow_mask_embed.weight.any()


def test_attribute_weights_scale_each_attributes_probe_loss(tiny_checkpoint, processor):
    """The first step's loss (before any update) is the weighted sum of the attributes' probe losses."""
    from finecaption_plugin import FineCaptionForConditionalGeneration

    def first_loss(weights):
        model = FineCaptionForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32)
        return pretrain_towers(model, processor, steps=1, batch_size=4, attribute_weights=weights, progress=False)[0]

    plain = first_loss(None)
    assert first_loss({name: 2.0 for name in ATTRIBUTE_VALUES}) == pytest.approx(2 * plain, rel=1e-5)
    only_color = first_loss({name: float(name == "color") for name in ATTRIBUTE_VALUES})
    without_color = first_loss({"color": 0.0})
    assert 0 < only_color < plain
    assert only_color + without_color == pytest.approx(plain, rel=1e-5)
    # The pattern probe is opt-in: weighted, it adds its three readouts' cross-entropy (about ln 6 each at first).
    assert PATTERN not in probe_targets() and PATTERN in probe_targets({PATTERN: 1.0})
    with_pattern = first_loss({PATTERN: 1.0})
    assert with_pattern - plain == pytest.approx(3 * np.log(len(PATTERN_VALUES)), rel=0.3)
