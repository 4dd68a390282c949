"""Parameter and token counts of a configuration, on the meta device (``finecaption info PRESET``)."""

from __future__ import annotations

from .parts import component_of, component_prefixes

# Component name -> module prefixes inside FineCaptionForConditionalGeneration (rows of parts.COMPONENTS).
COMPONENTS = component_prefixes()


def describe(config) -> dict:
    """Sizes of a `FineCaptionConfig` without allocating: totals, per component, image tokens and size."""
    import torch

    from .modeling_finecaption import FineCaptionForConditionalGeneration

    with torch.device("meta"):
        model = FineCaptionForConditionalGeneration(config)
    per_component = dict.fromkeys(COMPONENTS, 0)
    for name, parameter in model.named_parameters():
        per_component[component_of(name).name] += parameter.numel()
    return {
        "total_params": sum(per_component.values()),
        "image_tokens": config.num_image_tokens,
        "image_size": config.image_size,
        "fast_image_size": config.fast_image_size,
        "params": per_component,
    }
