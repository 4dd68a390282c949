"""The shipped demo FineCaption: where its checkpoint lives and how `make demo-model` builds and exports it.

No FineCaption weights were ever released, so the package ships its own small model: the `demo` preset
(`configuration_finecaption.PRESETS`), a tokenizer learnt from the scene generator's text (`synth.corpus`),
trained from scratch with `finecaption train` on generated scenes (`finecaption synth --format llava`) on a
CPU. The checkpoint is stored in float16 (to stay under 16 MB) and loads in float32 (its `config.json` says
so, which `from_pretrained(dtype="auto")`, the default, follows).
"""

from __future__ import annotations

from pathlib import Path

DEMO_PRESET = "demo"
DEMO_TEMPLATE = "llama3"  # the conversation template (`--version`) it is trained and prompted with
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
STORAGE_DTYPE = "float16"
# Tower pretraining (`tower_pretraining`) in two stages, each with its weight on each probe's loss (others 1);
# category and texture are what the towers learn last, and one trades against the other (benchmarks/README.md,
# items 12-17). Texture must be learnt first, from nothing: once category is, the ConvNeXt does not learn texture
# any more. So the first stage weights texture and the stripes' direction (`PATTERN`) most; then a stage on other
# scenes at half the learning rate weights category most, and texture holds. ("texture pattern" is
# `tower_pretraining.PATTERN`, spelt out so that importing this module stays light.)
DEMO_TOWER_ATTRIBUTE_WEIGHTS = {"materials/texture": 3.0, "texture pattern": 3.0, "category name": 2.0}
DEMO_TOWER_REFINE_WEIGHTS = {"materials/texture": 1.0, "texture pattern": 2.0, "category name": 3.0}
DEMO_TOWER_REFINE_LEARNING_RATE = 1e-3


def demo_checkpoint() -> Path:
    """The folder of the shipped demo checkpoint (model, tokenizer, processor), for `from_pretrained`."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the demo checkpoint is missing from {DEMO_MODEL_DIR}: reinstall finecaption-plugin, or rebuild it "
            "with `make demo-model` in a clone of the repository"
        )
    return DEMO_MODEL_DIR


def create_demo_init(path: str | Path, seed: int = 0, tower_steps: int = 0, refine_steps: int = 0) -> Path:
    """Write the demo model before captioning training: random weights, a tokenizer learnt from the generator's text
    and the chat template's own words (its system prompt would otherwise cost ~130 byte-level tokens per sample),
    and its vision tower and projector pretrained (`tower_pretraining`: the role Alpha-CLIP's and ConvNeXt's
    pretrained weights play for the full model): `tower_steps` steps on scenes of `seed` weighted by
    `DEMO_TOWER_ATTRIBUTE_WEIGHTS`, then `refine_steps` on scenes of `seed + 1` weighted by
    `DEMO_TOWER_REFINE_WEIGHTS` at `DEMO_TOWER_REFINE_LEARNING_RATE` (fresh probes and optimizer)."""
    from .conversation import TEMPLATES
    from .synth import corpus
    from .tiny import create_tiny_checkpoint

    template = TEMPLATES[DEMO_TEMPLATE]
    text = [*corpus(), template.system, "system user assistant"]
    path = create_tiny_checkpoint(path, seed=seed, preset=DEMO_PRESET, corpus=text)
    if tower_steps > 0 or refine_steps > 0:
        import torch
        from transformers import AutoProcessor

        from .modeling_finecaption import FineCaptionForConditionalGeneration
        from .tower_pretraining import pretrain_towers

        model = FineCaptionForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(path)
        if tower_steps > 0:
            weights = DEMO_TOWER_ATTRIBUTE_WEIGHTS
            pretrain_towers(model, processor, tower_steps, seed=seed, attribute_weights=weights)
        if refine_steps > 0:
            pretrain_towers(
                model, processor, refine_steps, seed=seed + 1,
                learning_rate=DEMO_TOWER_REFINE_LEARNING_RATE, attribute_weights=DEMO_TOWER_REFINE_WEIGHTS,
            )  # fmt: skip
        model.save_pretrained(path)
    return path


def export_demo(trained: str | Path, target: str | Path = DEMO_MODEL_DIR) -> Path:
    """Copy the trained model at `trained` to `target`: weights in float16, `config.json` loading float32."""
    import torch
    from transformers import AutoProcessor

    from .modeling_finecaption import FineCaptionForConditionalGeneration

    target = Path(target)
    model = FineCaptionForConditionalGeneration.from_pretrained(trained, dtype=torch.float32)
    model.to(getattr(torch, STORAGE_DTYPE)).save_pretrained(target)
    model.config.dtype = torch.float32  # computed in float32 on load; float16 is only how the file stores it
    model.config.save_pretrained(target)
    AutoProcessor.from_pretrained(trained).save_pretrained(target)
    return target


DEMO_TEST_SEED = 2026  # never used for training data (`make demo-model` trains on seed 0)
DEMO_TEST_IMAGES = 30


class DemoError(RuntimeError):
    """The demo's evaluation run failed; the message says where its log is."""


def run_demo(
    output: str | Path,
    images: int = DEMO_TEST_IMAGES,
    seed: int = DEMO_TEST_SEED,
    limit: int | None = None,
    batch_size: int = 16,
    model: str | Path | None = None,
) -> dict[str, Path]:
    """`make demo`: generate a test split, run `lmms-eval --model finecaption` on `compositioncap` (aarc, rdc,
    global) with the shipped model, and print the attribute accuracy and where the galleries are.

    Writes `output/data` (the CompositionCap folder) and `output/logs` (lmms-eval's results, samples, and per task
    `breakdown.json` + gallery). Returns the gallery `index.html` of each task, by task name.
    """
    import json
    import os
    import subprocess
    import sys
    import time

    from .attribute_accuracy import format_confusions, format_table
    from .synth import write_synth

    output = Path(output)
    data, logs = output / "data", output / "logs"
    write_synth(data, images, seed=seed)
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "finecaption",
        "--model_args", f"pretrained={Path(model) if model is not None else demo_checkpoint()}",
        "--tasks", "compositioncap", "--batch_size", str(batch_size),
        "--output_path", str(logs), "--log_samples",
        *(["--limit", str(limit)] if limit is not None else []),
    ]  # fmt: skip
    print("$ COMPOSITIONCAP_ROOT=" + str(data), " ".join(command), flush=True)
    started = time.time()
    result = subprocess.run(command, env={**os.environ, "COMPOSITIONCAP_ROOT": str(data)}, check=False)
    if result.returncode != 0:
        raise DemoError(f"lmms-eval exited with status {result.returncode} (its output is above)")
    galleries: dict[str, Path] = {}
    for breakdown_path in sorted(logs.glob("*/*/breakdown.json")):
        if breakdown_path.stat().st_mtime < started:
            continue  # an earlier run's
        breakdown = json.loads(breakdown_path.read_text(encoding="utf-8"))
        galleries[breakdown["variant"]] = breakdown_path.parent / "index.html"
        if breakdown.get("attribute_accuracy"):
            print()
            print(format_table(breakdown["attribute_accuracy"], title=f"{breakdown['variant']} attribute"))
            print(format_confusions(breakdown["attribute_accuracy"]["per_attribute"]))
    if not galleries:
        raise DemoError(f"lmms-eval wrote no CompositionCap breakdown under {logs}")
    print("\nGalleries (open in a browser):")
    for variant, page in galleries.items():
        print(f"  {variant}: {page.resolve()}")
    return galleries
