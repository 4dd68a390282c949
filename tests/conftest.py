"""Shared fixtures: a tiny random FineCaption checkpoint and its processor, built once per test session, offline."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny FineCaption checkpoint (model, tokenizer, processor); treat it as read-only."""
    from finecaption_plugin.tiny import create_tiny_checkpoint

    return create_tiny_checkpoint(tmp_path_factory.mktemp("tiny-finecaption"), seed=0)


@pytest.fixture(scope="session")
def processor(tiny_checkpoint: Path):
    """The tiny checkpoint's ``FineCaptionProcessor`` (through ``AutoProcessor``); treat it as read-only."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture()
def root(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CompositionCap demo data folder (3 images), set as COMPOSITIONCAP_ROOT."""
    from finecaption_plugin import compositioncap

    folder = tmp_path / "compositioncap"
    compositioncap.write_demo_folder(folder, images=3)
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(folder))
    # lmms-eval reads this once per process: one folder for the session, outside the user's cache.
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "datasets-cache"))
    return folder


def with_loud_images(source: Path, target: Path, seed: int = 0) -> Path:
    """A copy of the checkpoint at ``source`` whose projector and mask branch are random, written to ``target``.

    A freshly initialised tiny model's image features are ~0.001 next to token embeddings of ~0.02, so its answers
    hardly depend on the image; with a loud projector different images (and masks) get different answers.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    # the projector, and the mask branch (zero-initialised: masks would change nothing)
    for weight, std in ((model.model.multi_modal_projector.linear_2.weight, 0.5),
                        (model.model.vision_tower.fast_mask_embed.weight, 0.05)):  # fmt: skip
        weight.data = torch.randn(weight.shape, generator=generator) * std
    model.save_pretrained(target)
    AutoProcessor.from_pretrained(source).save_pretrained(target)
    return target
