"""`finecaption info PRESET`: parameter counts and token counts of a configuration, on the meta device."""

from __future__ import annotations

import argparse
import json

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


def _run(args: argparse.Namespace) -> int:
    from .configuration_finecaption import FineCaptionConfig

    print(json.dumps(describe(FineCaptionConfig.from_preset(args.preset)), indent=2))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from .configuration_finecaption import PRESETS

    parser = subparsers.add_parser("info", help="parameter and image-token counts of a preset (JSON)")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.set_defaults(func=_run)
