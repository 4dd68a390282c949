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
