"""finecaption_plugin/compositioncap_demo.py: the demo data folder and its command."""

from __future__ import annotations

from pathlib import Path

import pytest
from compositioncap_fixtures import as_dataset, load_records

from finecaption_plugin import compositioncap
from finecaption_plugin.compositioncap import select_docs


def test_demo_folder_selects_every_task(root: Path):
    dataset = as_dataset(load_records(root))
    assert {task: len(select_docs(dataset, task)) for task in ("aarc", "rdc", "global")} == {
        "aarc": 12,
        "rdc": 6,
        "global": 3,
    }
    assert set(select_docs(dataset, "aarc")["attribute"]) == {"color", "shape"}


def test_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    from finecaption_plugin.cli import main

    assert main(["compositioncap-demo", str(tmp_path / "demo"), "--images", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "demo" / compositioncap.TEST_FILE)
    assert len(load_records(tmp_path / "demo")) == 14
