"""The shipped demo model: where it is, that it loads, what it says, and `make demo`'s path (reduced)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finecaption_plugin import cli, demo_checkpoint
from finecaption_plugin.demo import DEMO_MODEL_DIR, create_demo_init
from finecaption_plugin.synth import make_scene

# Captions the shipped model gives for a few fixed regions of generated scenes (`tests/data/demo_captions.json`,
# written by `python tests/test_demo.py`): `finecaption caption` must reproduce them exactly (greedy, float32).
EXPECTED = Path(__file__).parent / "data" / "demo_captions.json"
FIXED_REGIONS = [  # (scene seed, scene index, entity, attribute); seed 4321 is neither training's nor the demo's
    (4321, 0, 0, "color"),
    (4321, 0, 1, "category name"),
    (4321, 1, 0, "materials/texture"),
    (4321, 2, 1, "shape"),
    (4321, 3, 0, None),  # the dense caption
]


def region_files(folder: Path, seed: int, index: int, entity: int) -> tuple[Path, Path]:
    scene = make_scene(seed, index)
    image, mask = folder / f"s{seed}_{index}.png", folder / f"s{seed}_{index}_e{entity}.png"
    Image.fromarray(scene.image).save(image)
    Image.fromarray(scene.entities[entity].mask.astype(np.uint8) * 255).save(mask)
    return image, mask


def caption_fixed_regions(folder: Path) -> list[dict]:
    rows = []
    for seed, index, entity, attribute in FIXED_REGIONS:
        image, mask = region_files(folder, seed, index, entity)
        task = ["--task", "aarc", "--attribute", attribute] if attribute else ["--task", "rdc"]
        argv = ["caption", str(image), "--mask", str(mask), *task, "--json"]
        rows.append({"region": [seed, index, entity, attribute], "argv_tail": task, "argv": argv})
    return rows


def test_the_checkpoint_is_shipped_small_and_loads_through_the_auto_classes():
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = demo_checkpoint()
    assert path == DEMO_MODEL_DIR and (path / "config.json").is_file()
    assert sum(f.stat().st_size for f in path.iterdir()) <= 16 * 2**20
    assert AutoConfig.from_pretrained(path).model_type == "finecaption"
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.dtype == torch.float32  # stored in float16, computed in float32
    assert type(model).__name__ == "FineCaptionForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(path)
    assert processor.num_image_tokens == model.config.num_image_tokens == 64
    # the mask branch was trained: it is no longer the zero-initialised identity
    assert model.model.vision_tower.fast_mask_embed.weight.abs().max() > 0


def test_finecaption_caption_reproduces_the_committed_captions(tmp_path, capsys):
    expected = json.loads(EXPECTED.read_text())
    assert [row["region"] for row in expected] == [list(region) for region in FIXED_REGIONS]
    for row, run in zip(expected, caption_fixed_regions(tmp_path), strict=True):
        assert cli.main(run["argv"]) == 0
        (line,) = capsys.readouterr().out.splitlines()
        assert json.loads(line)["caption"] == row["caption"], row["region"]


def test_the_demo_model_answers_follow_the_mask(tmp_path, capsys):
    """The same question about two regions of one image gets different answers: the mask reaches the model.

    (How often the answers are *right* is measured by benchmarks/bench_visual_prompts.py, not asserted here.)
    """
    scene = make_scene(4321, 5)
    image, mask_a = region_files(tmp_path, 4321, 5, 0)
    _, mask_b = region_files(tmp_path, 4321, 5, 1)
    answers = []
    for attribute in ("category name", "color", "materials/texture"):
        argv = ["caption", str(image), "--mask", str(mask_a), "--mask", str(mask_b), "--task", "aarc",
                "--attribute", attribute]  # fmt: skip
        assert cli.main(argv) == 0
        answers.append(capsys.readouterr().out.splitlines())
    assert len(scene.entities) >= 2
    assert any(first != second for first, second in answers)


def test_demo_init_learns_a_tokenizer_for_the_generator_s_text(tmp_path):
    from transformers import AutoTokenizer

    from finecaption_plugin.conversation import TEMPLATES
    from finecaption_plugin.synth import corpus

    path = create_demo_init(tmp_path / "init")
    tokenizer = AutoTokenizer.from_pretrained(path)
    words = sum(len(text.split()) for text in corpus()[:50])
    tokens = sum(len(tokenizer.tokenize(text)) for text in corpus()[:50])
    assert tokens < 1.5 * words  # the generator's words are (nearly) single tokens
    assert len(tokenizer.tokenize(TEMPLATES["llama3"].system)) < 50


def test_demo_init_pretrains_the_towers_in_two_stages(tmp_path, monkeypatch):
    """`--tower-steps` then `--refine-steps`: one model through both stages, each with its own weights, scenes and
    learning rate, and the result saved."""
    import torch

    from finecaption_plugin import demo, tower_pretraining

    calls = []

    def fake_pretrain(model, processor, steps, seed=0, learning_rate=2e-3, attribute_weights=None, **kwargs):
        calls.append((id(model), steps, seed, learning_rate, attribute_weights))
        with torch.no_grad():
            model.model.multi_modal_projector.linear_1.bias.add_(1.0)  # what the stage learnt
        return [0.0] * steps

    monkeypatch.setattr(tower_pretraining, "pretrain_towers", fake_pretrain)
    path = create_demo_init(tmp_path / "init", seed=3, tower_steps=5, refine_steps=2)
    assert [call[1:] for call in calls] == [
        (5, 3, 2e-3, demo.DEMO_TOWER_ATTRIBUTE_WEIGHTS),
        (2, 4, demo.DEMO_TOWER_REFINE_LEARNING_RATE, demo.DEMO_TOWER_REFINE_WEIGHTS),
    ]
    assert calls[0][0] == calls[1][0]  # the second stage continues the first's model
    for weights in (demo.DEMO_TOWER_ATTRIBUTE_WEIGHTS, demo.DEMO_TOWER_REFINE_WEIGHTS):  # each key names a probe
        assert set(weights) <= set(tower_pretraining.probe_targets(weights))
    untrained = create_demo_init(tmp_path / "untrained", seed=3)
    from safetensors.torch import load_file

    key = next(k for k in load_file(path / "model.safetensors") if k.endswith("multi_modal_projector.linear_1.bias"))
    difference = load_file(path / "model.safetensors")[key] - load_file(untrained / "model.safetensors")[key]
    torch.testing.assert_close(difference, torch.full_like(difference, 2.0))  # both stages' changes were saved


@pytest.mark.e2e
def test_make_demo_path_reduced(tmp_path, capsys):
    """`make demo` = `finecaption demo`: generated test split, lmms-eval on compositioncap, table and galleries."""
    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "--images", "2", "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "compositioncap_aarc attribute" in out and "overall" in out
    for task in ("compositioncap_aarc", "compositioncap_rdc", "compositioncap_global"):
        assert f"  {task}: " in out
    pages = sorted((tmp_path / "demo" / "logs").glob("*/*/index.html"))
    assert len(pages) == 3


if __name__ == "__main__":  # write tests/data/demo_captions.json from the shipped model
    import contextlib
    import io
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for run in caption_fixed_regions(Path(folder)):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                assert cli.main(run["argv"]) == 0
            rows.append({"region": run["region"], "caption": json.loads(buffer.getvalue())["caption"]})
    EXPECTED.write_text(json.dumps(rows, indent=1) + "\n")
    print(EXPECTED.read_text())
