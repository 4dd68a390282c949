"""Every lmms-eval ``TaskManager`` also indexes the tasks shipped in ``finecaption_plugin.tasks``.

Why: lmms-eval finds a plugin's tasks only through ``--include_path``, and the folders that
``LMMS_EVAL_PLUGINS`` names are added after the ``TaskManager`` is built, so they are never found.
With this patch ``--tasks compositioncap_aarc`` works without ``--include_path``; the explicit, patch-free
equivalent is ``lmms-eval ... --include_path "$(finecaption tasks-dir)"``.
"""

from __future__ import annotations

import functools

from finecaption_plugin.tasks import tasks_dir

MARK = "_finecaption_task_index"


def patch(task_manager: type) -> None:
    """Wrap ``task_manager.initialize_tasks`` so that its include paths hold ``tasks_dir()``. Idempotent."""
    original = task_manager.initialize_tasks
    if getattr(original, MARK, False):
        return

    @functools.wraps(original)
    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
        if tasks_dir() not in paths:
            paths.append(tasks_dir())
        return original(self, include_path=paths, include_defaults=include_defaults)

    setattr(initialize_tasks, MARK, True)
    task_manager.initialize_tasks = initialize_tasks
