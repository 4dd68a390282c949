"""The lmms-eval 0.7.3 fixes, applied together by ``apply()`` (see README.md beside this file).

``apply`` runs when lmms-eval calls the plugin's ``lmms_eval.models`` entry point, while it imports
``lmms_eval.models``: the only moment the plugin runs inside a plain ``lmms-eval`` command before the
evaluation starts. The third problem, ``No module named 'filelock._api'``, is solved by the ``filelock<4`` pin.
"""

from __future__ import annotations

from . import exit_status, results_written, task_index


def apply() -> None:
    """Index the shipped tasks in every ``TaskManager``; make failed command-line runs, and runs whose results
    cannot be written, exit 1. Idempotent."""
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker
    from lmms_eval.tasks import TaskManager

    task_index.patch(TaskManager)
    exit_status.patch(TaskManager)
    results_written.patch(EvaluationTracker)
