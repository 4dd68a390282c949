"""A failed lmms-eval command-line run exits with status 1, not 0.

Why: lmms-eval 0.7.3's ``cli_evaluate`` catches every ``Exception``, logs it and returns, so a run whose
evaluation raises, or one naming a task that nothing matches (``Tasks not found`` is raised into the same
catch-all, before ``simple_evaluate``), exits 0 and scripts carry on. Here:

- ``simple_evaluate``, called with ``cli_args`` (the command line), prints the traceback and raises
  ``SystemExit(1)``, which ``except Exception`` lets through. It can be wrapped only once
  ``lmms_eval.evaluator`` has finished importing (the entry point runs while it is being imported), so the
  wrapper is installed when the command line builds its ``TaskManager``, just before ``simple_evaluate``;
- ``TaskManager.match_tasks``, when its caller is the command line's ``cli_evaluate_single``, applies the
  command line's own not-found test and exits 1 naming the names.

Python API callers (``simple_evaluate`` without ``cli_args``, ``match_tasks`` called by anything else) are
unchanged and still get the exception or the matches.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path

MARK = "_finecaption_exit_status"
CLI_MODULE = ("lmms_eval", "__main__.py")


def patch(task_manager: type) -> None:
    """Wrap ``initialize_tasks`` (to install ``exit_on_failure``) and ``match_tasks``. Idempotent."""
    if getattr(task_manager.initialize_tasks, MARK, False):
        return
    original_initialize = task_manager.initialize_tasks
    original_match_tasks = task_manager.match_tasks

    @functools.wraps(original_initialize)
    def initialize_tasks(self, *args, **kwargs):
        # lmms-eval's CLI builds the TaskManager once its modules are all loaded: the first moment
        # `simple_evaluate` exists to be wrapped.
        exit_on_failure()
        return original_initialize(self, *args, **kwargs)

    @functools.wraps(original_match_tasks)
    def match_tasks(self, task_list):
        matched = original_match_tasks(self, task_list)
        caller = sys._getframe(1).f_code
        if caller.co_name == "cli_evaluate_single" and Path(caller.co_filename).parts[-2:] == CLI_MODULE:
            exit_on_unknown_tasks(task_list, matched)
        return matched

    setattr(initialize_tasks, MARK, True)
    task_manager.initialize_tasks = initialize_tasks
    task_manager.match_tasks = match_tasks


def exit_on_failure() -> None:
    """Wrap ``lmms_eval.evaluator.simple_evaluate`` so that an error in a command-line run exits 1."""
    evaluator = sys.modules.get("lmms_eval.evaluator")
    simple_evaluate = getattr(evaluator, "simple_evaluate", None)
    if simple_evaluate is None or getattr(simple_evaluate, MARK, False):
        return

    @functools.wraps(simple_evaluate)
    def checked_simple_evaluate(*args, **kwargs):
        if kwargs.get("cli_args") is None:
            return simple_evaluate(*args, **kwargs)
        try:
            return simple_evaluate(*args, **kwargs)
        except Exception as error:
            # cli_evaluate catches Exception and carries on to exit 0; SystemExit passes through it.
            traceback.print_exc()
            print(f"lmms-eval run failed: {error}", file=sys.stderr)
            raise SystemExit(1) from error

    setattr(checked_simple_evaluate, MARK, True)
    evaluator.simple_evaluate = checked_simple_evaluate


def exit_on_unknown_tasks(task_list: list[str], matched: list[str]) -> None:
    """Exit 1 for names of ``task_list`` that lmms-eval's command line would report as not found."""
    # The command line's own test: neither a task, group or tag, nor a YAML file, nor a wildcard.
    missing = [name for name in task_list if name not in matched and "*" not in name and not os.path.isfile(name)]
    if missing:
        print(
            f"lmms-eval run failed: tasks not found: {', '.join(missing)} (`lmms-eval --tasks list` lists them)",
            file=sys.stderr,
        )
        raise SystemExit(1)
