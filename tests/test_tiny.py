"""finecaption_plugin.tiny: ``finecaption create-tiny`` writes a loadable random checkpoint per seed."""

from __future__ import annotations

import subprocess
import sys

import torch
from transformers import AutoModelForImageTextToText

import finecaption_plugin  # noqa: F401  (registers the Auto classes)


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
