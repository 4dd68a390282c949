"""A command-line run whose results cannot be written exits with status 1, not 0.

Why: lmms-eval 0.7.3's ``EvaluationTracker.save_results_aggregated`` and ``save_results_samples`` catch every
exception, log "Could not save results" and return, so a run with a read-only (or full) ``--output_path``
computes everything, saves nothing and exits 0. Here:

- when the command line builds its ``EvaluationTracker`` with an output path, the path is made and a file
  created and removed in it, before anything is evaluated: a path that cannot be written ends the run at once;
- after each save, the file it should have written must exist (``<date>_results.json``; the samples log when
  there were samples); if not, the run exits 1 naming the file.

Callers other than the command line's ``cli_evaluate_single`` (the Python API) get an ``OSError`` instead of
the exit.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

from .exit_status import CLI_MODULE

MARK = "_finecaption_results_written"


class ResultsNotWrittenError(OSError):
    """lmms-eval's results (or samples) could not be written to ``--output_path``."""


def patch(tracker: type) -> None:
    """Wrap ``EvaluationTracker.__init__``, ``save_results_aggregated`` and ``save_results_samples``. Idempotent."""
    if getattr(tracker.__init__, MARK, False):
        return
    original_init = tracker.__init__
    original_aggregated = tracker.save_results_aggregated
    original_samples = tracker.save_results_samples

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if getattr(self, "output_path", None):
            try:
                folder = Path(self.output_path)
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder, prefix=".lmms-eval-write-check"):
                    pass
            except OSError as error:
                _fail(f"--output_path {self.output_path} cannot be written ({error.strerror or error}): nothing "
                      "was evaluated", sys._getframe(1).f_code)  # fmt: skip

    @functools.wraps(original_aggregated)
    def save_results_aggregated(self, results, samples, datetime_str):
        original_aggregated(self, results, samples, datetime_str)
        if getattr(self, "output_path", None):
            expected = _folder(self) / f"{datetime_str.replace(':', '-')}_results.json"
            if not expected.is_file():
                _fail(f"the results were computed but could not be written to {expected}", sys._getframe(1).f_code)

    @functools.wraps(original_samples)
    def save_results_samples(self, task_name, samples):
        original_samples(self, task_name, samples)
        if getattr(self, "output_path", None) and samples:
            expected = _folder(self) / f"{self.date_id}_samples_{task_name}.jsonl"
            if not expected.is_file():
                _fail(f"the samples of {task_name} could not be written to {expected}", sys._getframe(1).f_code)

    for wrapper in (__init__, save_results_aggregated, save_results_samples):
        setattr(wrapper, MARK, True)
    tracker.__init__ = __init__
    tracker.save_results_aggregated = save_results_aggregated
    tracker.save_results_samples = save_results_samples


def _folder(tracker) -> Path:
    return Path(tracker.output_path) / str(tracker.general_config_tracker.model_name_sanitized or "")


def _fail(message: str, caller) -> None:
    if caller.co_name == "cli_evaluate_single" and Path(caller.co_filename).parts[-2:] == CLI_MODULE:
        print(f"lmms-eval run failed: {message}", file=sys.stderr)
        raise SystemExit(1)
    raise ResultsNotWrittenError(message)
