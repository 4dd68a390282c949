"""The lmms-eval 0.7.3 problems a plugin user meets, gone: filelock._api, --include_path, exit status 0."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest

from finecaption_plugin.cli import tasks_dir
from finecaption_plugin.lmms_eval_manifest import _exit_on_failure, patch_lmms_eval


def test_filelock_api_import_works():
    # lmms-eval's evaluator imports filelock._api on every run; filelock 4 removed it (pinned <4).
    from lmms_eval.evaluator import _enable_reentrant_filelocks

    _enable_reentrant_filelocks()
    import filelock._api  # noqa: F401


@pytest.fixture(scope="module")
def manager():
    from lmms_eval.tasks import TaskManager

    patch_lmms_eval()
    patch_lmms_eval()  # idempotent: one wrapper
    return TaskManager()


def test_shipped_tasks_are_indexed_without_include_path(manager):
    index = manager.task_index
    assert index["compositioncap_aarc"]["yaml_path"].startswith(tasks_dir())
    assert index["compositioncap"]["type"] == "group"
    assert "coco2017_cap_val" in index  # lmms-eval's own tasks stay
    assert manager.initialize_tasks(include_path=tasks_dir()).keys() == index.keys()


@pytest.fixture()
def failing_evaluator(monkeypatch: pytest.MonkeyPatch):
    import lmms_eval.evaluator as evaluator

    def simple_evaluate(**kwargs):
        raise RuntimeError("the model crashed")

    monkeypatch.setattr(evaluator, "simple_evaluate", simple_evaluate)
    _exit_on_failure()
    return evaluator


def test_a_failed_command_line_run_exits_1(failing_evaluator, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as stop:
        failing_evaluator.simple_evaluate(model="finecaption", cli_args=Namespace())
    assert stop.value.code == 1
    assert "RuntimeError: the model crashed" in capsys.readouterr().err


def test_the_python_api_still_gets_the_exception(failing_evaluator):
    with pytest.raises(RuntimeError, match="the model crashed"):
        failing_evaluator.simple_evaluate(model="finecaption")


def test_an_unknown_task_name_exits_1_from_the_command_line_only(manager, capsys: pytest.CaptureFixture):
    # A stand-in for lmms-eval's `cli_evaluate_single`, which calls `match_tasks` and then reports
    # unknown names by raising into a catch-all that exits 0.
    namespace: dict = {}
    source = "def cli_evaluate_single(manager, names):\n    return manager.match_tasks(names)\n"
    exec(compile(source, str(Path("site-packages", "lmms_eval", "__main__.py")), "exec"), namespace)
    cli_evaluate_single = namespace["cli_evaluate_single"]
    assert cli_evaluate_single(manager, ["compositioncap_aarc", "compositioncap_rdc_b*"]) == [
        "compositioncap_aarc",
        *sorted(name for name in manager.all_tasks if name.startswith("compositioncap_rdc_b")),
    ]
    with pytest.raises(SystemExit) as stop:
        cli_evaluate_single(manager, ["compositioncap_aarc", "no_such_task_xyz"])
    assert stop.value.code == 1
    assert "tasks not found: no_such_task_xyz" in capsys.readouterr().err
    # Anyone else gets the matches, as before.
    assert manager.match_tasks(["compositioncap_aarc", "no_such_task_xyz"]) == ["compositioncap_aarc"]


def test_results_that_cannot_be_written_end_a_command_line_run_with_1(manager, tmp_path: Path, capsys):
    """lmms-eval logs "Could not save results" and exits 0; with the fix the command line exits 1, and the
    Python API gets an OSError (``ResultsNotWrittenError``)."""
    from finecaption_plugin.patches.lmms_eval.results_written import ResultsNotWrittenError
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    namespace: dict = {}
    source = (
        "def cli_evaluate_single(EvaluationTracker, output_path, save):\n"
        "    tracker = EvaluationTracker(output_path=output_path)\n"
        "    save(tracker)\n"
        "    tracker.save_results_aggregated(results={}, samples=None, datetime_str='2026-01-01T00:00:00')\n"
        "    tracker.save_results_samples(task_name='t', samples=[])\n"
    )
    exec(compile(source, str(Path("site-packages", "lmms_eval", "__main__.py")), "exec"), namespace)
    cli_evaluate_single = namespace["cli_evaluate_single"]
    blocker = tmp_path / "file"
    blocker.write_text("")

    # An output path that cannot be written stops the run before anything is evaluated.
    with pytest.raises(SystemExit) as stop:
        cli_evaluate_single(EvaluationTracker, str(blocker / "out"), lambda tracker: None)
    assert stop.value.code == 1 and "cannot be written" in capsys.readouterr().err
    with pytest.raises(ResultsNotWrittenError, match="nothing was evaluated"):
        EvaluationTracker(output_path=str(blocker / "out"))

    # A write that fails at the end (the folder taken away, a full disk): exit 1, naming the file.
    def break_folder(tracker):
        tracker.general_config_tracker.model_name_sanitized = "model"
        (tmp_path / "out" / "model").write_text("")  # where lmms-eval makes its folder

    with pytest.raises(SystemExit) as stop:
        cli_evaluate_single(EvaluationTracker, str(tmp_path / "out"), break_folder)
    assert stop.value.code == 1
    assert "the results were computed but could not be written to" in capsys.readouterr().err
    tracker = EvaluationTracker(output_path=str(tmp_path / "out"))
    tracker.general_config_tracker.model_name_sanitized = "model"
    with pytest.raises(ResultsNotWrittenError, match="could not be written"):
        tracker.save_results_aggregated(results={}, samples=None, datetime_str="2026-01-01T00:00:00")
    # A run that writes its results goes on as before.
    (tmp_path / "out" / "model").unlink()
    tracker.save_results_aggregated(results={}, samples=None, datetime_str="2026-01-01T00:00:00")
    assert (tmp_path / "out" / "model" / "2026-01-01T00-00-00_results.json").is_file()
