"""Pretrains a FineCaption's vision tower and projector on generated scenes: the part pretrained weights play.

FineCaption starts from pretrained towers (Alpha-CLIP, ConvNeXt) and a pretrained LLM; a model grown from nothing
(the shipped demo model) has neither, and a language model learning to read a random vision tower while that tower
learns to see, from the captioning loss alone, stays at the language prior for thousands of steps (measured:
attribute accuracy at chance after 1,800 steps). This stage gives the towers what Alpha-CLIP's region-text
training gives them: for each entity of a generated scene, shown as FineCaption sees regions (its mask, or a box or
contour drawn on the image), the mean of its projected image tokens must tell the entity's attributes, through one
linear probe per attribute (discarded afterwards). The captioning run (`finecaption train`) then starts from image
tokens that already carry the region, and its language model only has to learn to read them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)


def region_examples(seed: int, processor, styles: dict[str, float]) -> Iterator[tuple]:
    """Endless `(pixel_values [3, S, S], mask_values [1, S, S], {attribute: value index})`, one per entity of the
    scenes `synth.make_scene(seed, 0)`, `(seed, 1)`, ...; each entity shown in a style drawn from `styles`
    (weights): "mask" gives the mask to the model, the drawn styles draw the region and give none."""
    from PIL import Image

    from .synth import ATTRIBUTE_VALUES, make_scene
    from .visual_prompts import render_visual_prompt

    rng = np.random.default_rng([seed, 7])
    names, weights = list(styles), np.array(list(styles.values()), dtype=float)
    index = 0
    while True:
        scene = make_scene(seed, index)
        picture = Image.fromarray(scene.image)
        for entity in scene.entities:
            style = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            if style == "mask":
                features = processor.image_processor(picture, masks=entity.mask, return_tensors="pt")
            else:
                drawn, _ = render_visual_prompt(picture, entity.mask, style, "")
                features = processor.image_processor(drawn.convert("RGB"), return_tensors="pt")
            labels = {name: ATTRIBUTE_VALUES[name].index(value) for name, value in entity.values().items()}
            yield features["pixel_values"][0], features["mask_values"][0], labels
        index += 1


def pretrain_towers(
    model,
    processor,
    steps: int,
    seed: int = 0,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    styles: dict[str, float] | None = None,
    progress: bool = True,
) -> list[float]:
    """Train `model`'s vision tower and projector (in place, float32) for `steps` steps of `batch_size` entities of
    scenes of `seed`; returns the loss of each step (the sum over attributes of the probes' cross-entropy)."""
    import torch
    from tqdm.auto import tqdm

    from .synth import ATTRIBUTE_VALUES, STYLE_WEIGHTS

    torch.manual_seed(seed)
    towers = [model.model.vision_tower, model.model.multi_modal_projector]
    hidden = model.config.text_config.hidden_size
    probes = torch.nn.ModuleDict(
        {str(i): torch.nn.Linear(hidden, len(values)) for i, values in enumerate(ATTRIBUTE_VALUES.values())}
    )
    attributes = list(ATTRIBUTE_VALUES)
    parameters = [p for module in towers for p in module.parameters()] + list(probes.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * np.cos(np.pi * min(step / steps, 1.0)))
    )
    examples = region_examples(seed, processor, styles or STYLE_WEIGHTS)
    was_training = model.training
    model.train()
    losses, hits = [], {name: [] for name in attributes}
    bar = tqdm(range(steps), desc="pretraining the towers", disable=not progress)
    for _ in bar:
        batch = [next(examples) for _ in range(batch_size)]
        pixels = torch.stack([b[0] for b in batch])
        masks = torch.stack([b[1] for b in batch])
        pooled = model.model.get_image_features(pixels, masks, return_dict=True).pooler_output.mean(1)
        loss = 0.0
        for i, name in enumerate(attributes):
            logits, targets = probes[str(i)](pooled), torch.tensor([b[2][name] for b in batch])
            loss = loss + torch.nn.functional.cross_entropy(logits, targets)
            hits[name].append((logits.argmax(-1) == targets).float().mean().item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    accuracy = {name: round(float(np.mean(values[-50:])), 3) for name, values in hits.items()}
    logger.info(
        "towers pretrained for %d steps: loss %.3f -> %.3f; probe accuracy over the last 50 steps %s",
        steps, losses[0], np.mean(losses[-20:]), accuracy,
    )  # fmt: skip
    model.train(was_training)
    return losses
