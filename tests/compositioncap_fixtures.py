"""Helpers shared by the CompositionCap tests: the records of a data folder, as lmms-eval's dataset."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from finecaption_plugin import compositioncap


def load_records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / compositioncap.TEST_FILE).read_text().splitlines()]


def as_dataset(records: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(records)


def first_record(root: Path, task: str) -> dict:
    return next(record for record in load_records(root) if record["task"] == task)
