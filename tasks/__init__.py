"""lmms-eval tasks shipped with finecaption-plugin; pass this folder to ``--include_path``."""

from pathlib import Path


def tasks_dir() -> str:
    """The folder of the shipped lmms-eval tasks, for ``lmms-eval --include_path`` (``finecaption tasks-dir``)."""
    return str(Path(__file__).parent)
