"""End to end: the plain `lmms-eval` command with `--model finecaption` on a CompositionCap folder.

Each run is a real subprocess (about a minute, mostly imports): one process, two processes under
`torchrun`, and a run whose data folder is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finecaption_plugin.compositioncap import METRICS, write_demo_folder

BIN = Path(sys.executable).parent
LIMIT = 8


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compositioncap")
    write_demo_folder(root, images=4)
    return root


def _run(launcher: list[str], checkpoint: Path, root: Path, out: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "COMPOSITIONCAP_ROOT": str(root),
        "HF_HOME": str(out.parent / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        *launcher,
        "--model", "finecaption",
        "--model_args", f"pretrained={checkpoint},max_new_tokens=8",
        "--tasks", "compositioncap_aarc",
        "--batch_size", "3",
        "--limit", str(LIMIT),
        "--output_path", str(out),
        "--log_samples",
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _scores(out: Path) -> dict[str, float]:
    (results_file,) = out.glob("*/*_results.json")
    results = json.loads(results_file.read_text())["results"]["compositioncap_aarc"]
    return {metric: results[f"{metric},none"] for metric in METRICS}


@pytest.fixture(scope="module")
def single_run(tiny_checkpoint: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    run = _run([str(BIN / "lmms-eval")], tiny_checkpoint, data_root, out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_lmms_eval_run_writes_all_five_metrics(single_run: Path):
    scores = _scores(single_run)
    assert all(isinstance(value, float) and 0 <= value <= 100 for value in scores.values()), scores
    (samples_file,) = single_run.glob("*/*_samples_compositioncap_aarc.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == LIMIT
    assert samples[0]["input"] == "Describe the color of the masked region."
    (extras,) = single_run.glob("*/*_compositioncap_aarc")
    breakdown = json.loads((extras / "breakdown.json").read_text())
    assert breakdown["scores"] == pytest.approx(scores)
    assert set(breakdown["per_attribute"]) == {"color", "shape"}
    assert (extras / "index.html").is_file() and (extras / "gallery.png").is_file()


def test_two_processes_give_the_same_scores(single_run: Path, tiny_checkpoint: Path, data_root: Path, tmp_path: Path):
    launcher = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "lmms_eval"]
    run = _run(launcher, tiny_checkpoint, data_root, tmp_path / "out")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert _scores(tmp_path / "out") == pytest.approx(_scores(single_run), abs=1e-9)


def test_missing_data_folder_exits_nonzero(tiny_checkpoint: Path, tmp_path: Path):
    run = _run([str(BIN / "lmms-eval")], tiny_checkpoint, tmp_path / "no-such-folder", tmp_path / "out")
    assert run.returncode == 1
    assert "COMPOSITIONCAP_ROOT=" in run.stderr and "is not a folder" in run.stderr
    assert not list((tmp_path / "out").glob("*/*_results.json"))
