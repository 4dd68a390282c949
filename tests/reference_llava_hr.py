"""LLaVA-HR's MR-Adapter and slow-map alignment (Luo et al., "Feast Your Eyes", 2024; its repository's
`llava/model/multimodal_encoder`) written out with plain tensor ops, shared by the tests that check the model
(and the converter) against them. Weights go by LLaVA-HR's names inside one `align_stages_latent.N` module:
`slow_conv.weight`, `gate.0.bias`, ..."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def align(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """`[batch, channels, h, h]` -> `[batch, grid * grid, channels]`: bilinear (align_corners) up, average-pool down."""
    if feature_map.shape[-1] < grid:
        feature_map = F.interpolate(feature_map, size=(grid, grid), mode="bilinear", align_corners=True)
    elif feature_map.shape[-1] > grid:
        feature_map = F.avg_pool2d(feature_map, feature_map.shape[-1] // grid)
    return feature_map.flatten(2).transpose(1, 2)


def mr_adapter(weights: Mapping[str, torch.Tensor], tokens: torch.Tensor, slow_map: torch.Tensor) -> torch.Tensor:
    """`tokens` `[batch, g * g, width]` and `slow_map` `[batch, c, h, h]` -> `L + tanh(g) * H'`, like `tokens`."""
    batch, length, width = tokens.shape
    grid = int(length**0.5)
    high = F.conv2d(slow_map, weights["slow_conv.weight"], weights["slow_conv.bias"])
    high = align(F.conv2d(F.gelu(high), weights["slow_proj.weight"], weights["slow_proj.bias"]), grid)
    low = tokens.transpose(1, 2).reshape(batch, width, grid, grid)
    hidden = F.conv2d(low, weights["fast_conv.weight"], weights["fast_conv.bias"], padding=3, groups=width)
    low = low + F.conv2d(F.gelu(hidden), weights["fast_proj.weight"], weights["fast_proj.bias"])
    low = low.flatten(2).transpose(1, 2)
    pooled = torch.cat([low, high], dim=-1).mean(dim=1)
    gate = F.linear(pooled, weights["gate.0.weight"], weights["gate.0.bias"])
    gate = F.linear(F.gelu(gate), weights["gate.2.weight"], weights["gate.2.bias"])
    return low + torch.tanh(gate).unsqueeze(1) * high
