"""lmms-eval's entry point into the plugin (group ``lmms_eval.models``): the model manifest, and fixes.

lmms-eval loads every entry point of the group while it imports ``lmms_eval.models`` and skips *all*
of them if one raises, so this module adds no imports beyond the package's own (whose ``__init__``
registers the Auto classes) and ``model_manifests`` never raises; the model class loads on first use.

That import is also the only moment the plugin runs inside a plain ``lmms-eval`` command before the
evaluation starts, so ``model_manifests`` applies two small fixes to lmms-eval 0.7.3 there (the
third problem, ``No module named 'filelock._api'``, is solved by the ``filelock<4`` pin):

- tasks need ``--include_path``: ``TaskManager`` also indexes the shipped ``finecaption_plugin.tasks``
  folder, so ``--tasks compositioncap_aarc`` works without it;
- a failed run exits 0 (``cli_evaluate`` logs every error and returns): a run started from the
  command line whose evaluation raises prints the traceback and exits with status 1, and so does one
  that names a task nothing matches. Runs through the Python API (``simple_evaluate`` without
  ``cli_args``, ``TaskManager.match_tasks`` called by anything but the command line) are unchanged.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from pathlib import Path

from .tasks import tasks_dir

logger = logging.getLogger(__name__)

MODEL_ID = "finecaption"
SIMPLE_CLASS_PATH = "finecaption_plugin.lmms_eval_model.FineCaption"
CHAT_CLASS_PATH = "finecaption_plugin.lmms_eval_model.FineCaptionChat"
CLI_MODULE = ("lmms_eval", "__main__.py")


def model_manifests() -> list:
    """The manifest of ``--model finecaption``: the chat class, or the simple one with ``--force_simple``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    try:
        patch_lmms_eval()
    except Exception:  # a failed fix must not cost lmms-eval every plugin model
        logger.warning(
            'could not patch lmms-eval; pass --include_path "$(finecaption tasks-dir)"', exc_info=True
        )
    return [
        ModelManifest(model_id=MODEL_ID, simple_class_path=SIMPLE_CLASS_PATH, chat_class_path=CHAT_CLASS_PATH)
    ]


def patch_lmms_eval() -> None:
    """Index the shipped tasks in every ``TaskManager``; make failed command-line runs exit 1. Idempotent.

    The command line's check for unknown task names comes right after its ``match_tasks`` call and
    raises into ``cli_evaluate``'s catch-all, before ``simple_evaluate``: so ``match_tasks``, when
    called from there, applies the same check itself and exits 1.
    """
    from lmms_eval.tasks import TaskManager

    if getattr(TaskManager.initialize_tasks, "_finecaption_patched", False):
        return
    original = TaskManager.initialize_tasks

    @functools.wraps(original)
    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
        if tasks_dir() not in paths:
            paths.append(tasks_dir())
        # lmms-eval's CLI builds the TaskManager once its modules are all loaded: the first moment
        # `simple_evaluate` exists to be wrapped (this module is imported while it is being defined).
        _exit_on_failure()
        return original(self, include_path=paths, include_defaults=include_defaults)

    original_match_tasks = TaskManager.match_tasks

    @functools.wraps(original_match_tasks)
    def match_tasks(self, task_list):
        matched = original_match_tasks(self, task_list)
        caller = sys._getframe(1).f_code
        if caller.co_name == "cli_evaluate_single" and Path(caller.co_filename).parts[-2:] == CLI_MODULE:
            _exit_on_unknown_tasks(task_list, matched)
        return matched

    initialize_tasks._finecaption_patched = True
    TaskManager.initialize_tasks = initialize_tasks
    TaskManager.match_tasks = match_tasks


def _exit_on_failure() -> None:
    """Wrap ``lmms_eval.evaluator.simple_evaluate`` so that an error in a command-line run exits 1."""
    evaluator = sys.modules.get("lmms_eval.evaluator")
    simple_evaluate = getattr(evaluator, "simple_evaluate", None)
    if simple_evaluate is None or getattr(simple_evaluate, "_finecaption_patched", False):
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

    checked_simple_evaluate._finecaption_patched = True
    evaluator.simple_evaluate = checked_simple_evaluate


def _exit_on_unknown_tasks(task_list: list[str], matched: list[str]) -> None:
    """Exit 1 for names of ``task_list`` that lmms-eval's command line would report as not found."""
    # The command line's own test: neither a task, group or tag, nor a YAML file, nor a wildcard.
    missing = [name for name in task_list if name not in matched and "*" not in name and not os.path.isfile(name)]
    if missing:
        print(
            f"lmms-eval run failed: tasks not found: {', '.join(missing)} (`lmms-eval --tasks list` lists them)",
            file=sys.stderr,
        )
        raise SystemExit(1)
