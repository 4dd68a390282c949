"""End to end: the plain `lmms-eval` command with `--model finecaption` on a CompositionCap folder.

Each run is a real subprocess (about a minute, mostly imports): one process, two processes under
`torchrun`, a run whose data folder is missing and one naming a task that does not exist.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finecaption_plugin.compositioncap import METRICS, write_demo_folder
from finecaption_plugin.tiny import create_tiny_checkpoint

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
# Odd, so that one of two processes gets a document fewer (lmms-eval pads the shorter rank).
LIMIT = 7
SEED = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights whose images matter (a loud projector): documents of different images get different
    answers, so an answer that reaches the wrong document shows in the per-document comparison."""
    from conftest import with_loud_images

    tiny = create_tiny_checkpoint(tmp_path_factory.mktemp("tiny-finecaption"), seed=SEED)
    return with_loud_images(tiny, tmp_path_factory.mktemp("loud-finecaption"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compositioncap")
    write_demo_folder(root, images=4)
    return root


def _run(
    launcher: list[str],
    checkpoint: Path,
    root: Path,
    out: Path,
    task: str = "compositioncap_aarc",
    model_args: str = "",
    extra_env: dict | None = None,
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "COMPOSITIONCAP_ROOT": str(root),
        "HF_HOME": str(out.parent / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    command = [
        *launcher,
        "--model", "finecaption",
        "--model_args", f"pretrained={checkpoint},max_new_tokens=8{model_args}",
        "--tasks", task,
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


def _samples(out: Path) -> list[dict]:
    (samples_file,) = out.glob("*/*_samples_compositioncap_aarc.jsonl")
    return [json.loads(line) for line in samples_file.read_text().splitlines()]


def _predictions(out: Path) -> dict[int, object]:
    return {sample["doc_id"]: sample["filtered_resps"] for sample in _samples(out)}


@pytest.fixture(scope="module")
def single_run(checkpoint: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    run = _run([str(BIN / "lmms-eval")], checkpoint, data_root, out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_lmms_eval_run_writes_all_five_metrics(single_run: Path):
    scores = _scores(single_run)
    assert all(isinstance(value, float) and 0 <= value <= 100 for value in scores.values()), scores
    samples = _samples(single_run)
    assert len(samples) == LIMIT
    assert samples[0]["input"] == "Describe the color of the masked region."
    # the documents of different images get different answers (the per-document comparisons below rely on it)
    assert len({json.dumps(answer) for answer in _predictions(single_run).values()}) >= 2
    assert "references" not in samples[0]["CIDEr"]  # the references are logged once, in doc and target
    (extras,) = single_run.glob("*/*_compositioncap_aarc")
    (results_file,) = single_run.glob("*/*_results.json")
    date = re.compile(r"\d{8}_\d{6}")  # lmms-eval's date form, so the folder sorts beside its results
    assert date.fullmatch(extras.name.removesuffix("_compositioncap_aarc"))
    assert date.fullmatch(results_file.name.removesuffix("_results.json"))
    breakdown = json.loads((extras / "breakdown.json").read_text())
    assert (breakdown["variant"], breakdown["style"]) == ("compositioncap_aarc", "mask")
    assert breakdown["scores"] == pytest.approx(scores)
    assert set(breakdown["per_attribute"]) == {"color", "shape"}
    assert (extras / "index.html").is_file() and (extras / "gallery.png").is_file()


def test_samples_log_rescores_per_attribute(single_run: Path, tmp_path: Path):
    """README's `finecaption score LOG --group-field attribute` gives the task's scores and breakdown."""
    (log,) = single_run.glob("*/*_samples_compositioncap_aarc.jsonl")
    output = tmp_path / "aarc.json"
    command = [str(BIN / "finecaption"), "score", str(log), "--group-field", "attribute", "-o", str(output)]
    subprocess.run(command, check=True, capture_output=True)
    rescored = json.loads(output.read_text())
    assert set(rescored["groups"]) == {"color", "shape"}
    assert {metric: rescored[metric] for metric in _scores(single_run)} == pytest.approx(_scores(single_run))


@pytest.mark.parametrize(
    "launcher",
    [
        ["torchrun", "--standalone", "--nproc_per_node", "2"],
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no"],
    ],  # fmt: skip
    ids=["torchrun", "accelerate"],
)
@pytest.mark.multiprocess
def test_two_processes_give_each_document_its_own_answer(
    single_run: Path, checkpoint: Path, data_root: Path, tmp_path: Path, launcher: list[str]
):
    launcher = [str(BIN / launcher[0]), *launcher[1:], "-m", "lmms_eval"]
    run = _run(launcher, checkpoint, data_root, tmp_path / "out")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    two = _predictions(tmp_path / "out")
    assert sorted(two) == list(range(LIMIT))
    assert two == _predictions(single_run)
    assert _scores(tmp_path / "out") == pytest.approx(_scores(single_run), abs=1e-9)
    (breakdown,) = (tmp_path / "out").glob("*/*_compositioncap_aarc/breakdown.json")
    assert json.loads(breakdown.read_text())["style"] == "mask"  # from the answering processes


def test_missing_data_folder_exits_nonzero(checkpoint: Path, tmp_path: Path):
    run = _run([str(BIN / "lmms-eval")], checkpoint, tmp_path / "no-such-folder", tmp_path / "out")
    assert run.returncode == 1
    assert "COMPOSITIONCAP_ROOT=" in run.stderr and "is not a folder" in run.stderr
    assert not list((tmp_path / "out").glob("*/*_results.json"))


def test_unknown_task_exits_nonzero(checkpoint: Path, data_root: Path, tmp_path: Path):
    run = _run([str(BIN / "lmms-eval")], checkpoint, data_root, tmp_path / "out", task="no_such_task_xyz")
    assert run.returncode == 1
    assert "tasks not found: no_such_task_xyz" in run.stderr


# Lost work (issue 12)

# lmms-eval's command line, killed (SIGKILL, as by the OOM killer or a scheduler) when KILL_AFTER answers are done.
KILLED_RUN = """
import os, signal, sys

from finecaption_plugin import lmms_eval_model

done, answer = [0], lmms_eval_model.FineCaption._generate_or_skip


def dying(self, batch, gen_kwargs):
    if done[0] >= int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
    answers = answer(self, batch, gen_kwargs)
    done[0] += len(batch)
    return answers


lmms_eval_model.FineCaption._generate_or_skip = dying
from lmms_eval.__main__ import cli_evaluate

sys.argv[0] = "lmms-eval"
cli_evaluate()
"""


def test_a_killed_run_resumes_without_redoing_finished_answers(
    single_run: Path, checkpoint: Path, data_root: Path, tmp_path: Path
):
    cache = tmp_path / "answers"
    model_args = f",answers_cache={cache}"
    killed = _run([sys.executable, "-c", KILLED_RUN], checkpoint, data_root, tmp_path / "killed", model_args=model_args,
                  extra_env={"KILL_AFTER": "3"})  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    (cache_file,) = cache.glob("answers-*.jsonl")
    kept = cache_file.read_text().splitlines()
    assert 3 <= len(kept) < LIMIT  # the answers made before the kill were kept
    resumed = _run([str(BIN / "lmms-eval")], checkpoint, data_root, tmp_path / "out", model_args=model_args)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    lines = cache_file.read_text().splitlines()
    assert lines[: len(kept)] == kept and len(lines) == LIMIT  # only the missing answers were generated
    assert _predictions(tmp_path / "out") == _predictions(single_run)  # the uninterrupted run's answers
    assert _scores(tmp_path / "out") == pytest.approx(_scores(single_run), abs=1e-9)


def test_results_that_cannot_be_written_exit_nonzero(checkpoint: Path, data_root: Path, tmp_path: Path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # a file where the output folder should be: unwritable even for root
    run = _run([str(BIN / "lmms-eval")], checkpoint, data_root, blocker / "logs")
    assert run.returncode == 1
    assert f"--output_path {blocker / 'logs'} cannot be written" in run.stderr and "nothing was evaluated" in run.stderr
