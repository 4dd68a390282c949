"""Pretrains a FineCaption's vision tower and projector on generated scenes: the part pretrained weights play.

FineCaption starts from pretrained towers (Alpha-CLIP, ConvNeXt) and a pretrained LLM; a model grown from nothing
(the shipped demo model) has neither, and a language model learning to read a random vision tower while that tower
learns to see, from the captioning loss alone, stays at the language prior for thousands of steps (measured:
attribute accuracy at chance after 1,800 steps). This stage gives the towers
what Alpha-CLIP's region-text training gives them: each entity of a generated scene is shown as FineCaption sees
regions (its mask, or a box or contour drawn on the image), and linear probes (discarded afterwards), one per
attribute and readout, must tell its attributes from three readouts: the slow (ConvNeXt) map and the projected image
tokens, each averaged over the entity's own pixels (the local evidence: measured, shapes are learnt several times
faster this way than through a whole-image average), and the mean of all projected tokens (what a language model
reading the tokens most easily finds). Given a weight, one more probe tells the texture's pattern with stripes
split by direction (`PATTERN`): diagonal stripes share the checkerboard's strongest frequencies, and a texture probe
has to put horizontal, vertical and diagonal stripes on one side of a line (measured: it lifts texture and costs
category; the shipped demo recipe weights it in two stages: benchmarks/README.md, items 12-17). The captioning run
(`finecaption train`) then starts from image tokens that already carry the region, and its language model only has
to learn to read them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)

PATTERN = "texture pattern"  # an extra probe target: the texture, stripes split by direction
PATTERN_VALUES: tuple[str, ...] = (
    "solid", "striped horizontal", "striped vertical", "striped diagonal", "dotted", "checkered",
)  # fmt: skip


def pattern_label(entity) -> str:
    """`entity`'s texture, stripes named with their direction (`synth.Entity.pattern[0]`: 0, 1, 2)."""
    if entity.texture != "striped":
        return entity.texture
    return f"striped {('horizontal', 'vertical', 'diagonal')[entity.pattern[0]]}"


def probe_targets(attribute_weights: dict[str, float] | None = None) -> dict[str, tuple[str, ...]]:
    """What the probes tell apart: the generator's parseable attributes, and `PATTERN` where `attribute_weights`
    gives it a positive weight."""
    from .synth import ATTRIBUTE_VALUES

    extra = {PATTERN: PATTERN_VALUES} if (attribute_weights or {}).get(PATTERN, 0) > 0 else {}
    return {**ATTRIBUTE_VALUES, **extra}


def region_examples(seed: int, processor, styles: dict[str, float]) -> Iterator[tuple]:
    """Endless `(pixel_values [3, S, S], mask_values [1, S, S], {target: value index}, entity_mask [1, S, S])`,
    one per entity of the scenes `synth.make_scene(seed, 0)`, `(seed, 1)`, ...; each entity shown in a style drawn
    from `styles` (weights): "mask" gives the mask to the model, the drawn styles draw the region and give none
    (`mask_values` all ones). `entity_mask` is the entity's mask as the processor resizes it, in every style; the
    targets are the attributes and `PATTERN`."""
    import torch
    from PIL import Image

    from .synth import ATTRIBUTE_VALUES, make_scene
    from .visual_prompts import render_visual_prompt

    rng = np.random.default_rng([seed, 7])
    names, weights = list(styles), np.array(list(styles.values()), dtype=float)
    index = 0
    image_processor = processor.image_processor
    while True:
        scene = make_scene(seed, index)
        picture = Image.fromarray(scene.image).convert("RGB")
        scene_pixels = None  # the mask style shows the scene itself: processed once for all its entities
        for entity in scene.entities:
            style = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            if style == "mask":
                if scene_pixels is None:
                    scene_pixels = torch.from_numpy(image_processor.preprocess_image(picture))
                pixels = scene_pixels
            else:
                shown = render_visual_prompt(picture, entity.mask, style, "")[0].convert("RGB")
                pixels = torch.from_numpy(image_processor.preprocess_image(shown))
            entity_mask = torch.from_numpy(image_processor.preprocess_mask(entity.mask, picture))
            mask = entity_mask if style == "mask" else torch.ones_like(entity_mask)
            labels = {name: ATTRIBUTE_VALUES[name].index(value) for name, value in entity.values().items()}
            labels[PATTERN] = PATTERN_VALUES.index(pattern_label(entity))
            yield pixels, mask, labels, entity_mask
        index += 1


def pretrain_towers(
    model,
    processor,
    steps: int,
    seed: int = 0,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    styles: dict[str, float] | None = None,
    attribute_weights: dict[str, float] | None = None,
    progress: bool = True,
) -> list[float]:
    """Train `model`'s vision tower and projector (in place, float32) for `steps` steps of `batch_size` entities of
    scenes of `seed`; returns the loss of each step (the sum over attributes and readouts of the probes'
    cross-entropy, each target of `probe_targets(attribute_weights)` weighted by `attribute_weights`, 1 by default).
    The probes' accuracy over the last 50 steps is logged."""
    import torch
    from tqdm.auto import tqdm

    from .synth import STYLE_WEIGHTS

    torch.manual_seed(seed)
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    classes = probe_targets(attribute_weights)
    attributes = list(classes)
    widths = {"slow": model.config.slow_dims[-1], "tokens": model.config.text_config.hidden_size}
    widths["mean"] = widths["tokens"]
    probes = torch.nn.ModuleDict(
        {
            f"{readout}_{i}": torch.nn.Linear(width, len(classes[name]))
            for readout, width in widths.items()
            for i, name in enumerate(attributes)
        }
    )
    parameters = [*tower.parameters(), *projector.parameters(), *probes.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * np.cos(np.pi * min(step / steps, 1.0)))
    )
    examples = region_examples(seed, processor, styles or STYLE_WEIGHTS)
    was_training = model.training
    model.train()
    losses, hits = [], {readout: {name: [] for name in attributes} for readout in widths}
    slow_maps = []  # the ConvNeXt map [batch, slow_dims[-1], g, g] of each forward
    hook = tower.slow_tower.register_forward_hook(lambda module, inputs, output: slow_maps.append(output))
    bar = tqdm(range(steps), desc="pretraining the towers", disable=not progress)
    for _ in bar:
        pixels, masks, labels, entity_masks = zip(*(next(examples) for _ in range(batch_size)), strict=True)
        pixels, masks, entity_masks = torch.stack(pixels), torch.stack(masks), torch.stack(entity_masks)
        tokens = projector(tower(pixels, masks, return_dict=True).last_hidden_state)
        readouts = {
            "slow": _masked_mean(slow_maps.pop().flatten(2).transpose(1, 2), entity_masks),
            "tokens": _masked_mean(tokens, entity_masks),
            "mean": tokens.mean(1),
        }
        loss = 0.0
        for i, name in enumerate(attributes):
            targets = torch.tensor([entity[name] for entity in labels])
            for readout, features in readouts.items():
                logits = probes[f"{readout}_{i}"](features)
                weight = (attribute_weights or {}).get(name, 1.0)
                loss = loss + weight * torch.nn.functional.cross_entropy(logits, targets)
                hits[readout][name].append((logits.argmax(-1) == targets).float().mean().item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    hook.remove()
    accuracy = {
        readout: {name: round(float(np.mean(values[-50:])), 3) for name, values in by_name.items()}
        for readout, by_name in hits.items()
    }
    logger.info(
        "towers pretrained for %d steps: loss %.3f -> %.3f; probe accuracy over the last 50 steps %s",
        steps, losses[0], np.mean(losses[-20:]), accuracy,
    )  # fmt: skip
    model.train(was_training)
    return losses


def _masked_mean(features, masks):
    """The mean of `features` `[batch, g * g, dim]` weighted by `masks` `[batch, 1, S, S]` averaged over each cell."""
    import torch.nn.functional as F

    grid = int(features.shape[1] ** 0.5)
    weights = F.adaptive_avg_pool2d(masks.to(features.dtype), grid).flatten(1).unsqueeze(-1)
    return (features * weights).sum(1) / weights.sum(1).clamp(min=1e-6)
