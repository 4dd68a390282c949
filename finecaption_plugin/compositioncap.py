"""Old import path of the CompositionCap modules: their public names, re-exported.

The work is split by job: ``records`` (the record schema, reading files, the nested converter),
``compositioncap_data`` (the data folder and its checks), ``compositioncap_hooks`` (the lmms-eval hooks and
their per-task state), ``compositioncap_scoring`` (the scores of a task), ``compositioncap_report``
(``breakdown.json`` and the gallery) and ``compositioncap_demo`` (a synthetic folder). The task folder
``finecaption_plugin/tasks/compositioncap`` holds the YAML and a thin ``utils.py`` naming the hooks.
"""

from __future__ import annotations

from .compositioncap_data import (
    ROOT_ENV,
    TEST_FILE,
    CompositionCapError,
    check_record,
    data_root,
    doc_image,
    doc_mask,
    test_file,
)
from .compositioncap_demo import write_demo_folder
from .compositioncap_hooks import (
    STATE,
    TaskState,
    aggregate,
    doc_to_text,
    doc_to_visual,
    process_results,
    select_docs,
    variant_docs,
    visual_prompt_style,
)
from .compositioncap_report import write_report
from .compositioncap_scoring import METRICS, TaskScores
from .records import convert_nested, flatten_image


def write_extras(samples, scores, out_dir) -> None:
    """Old name of ``compositioncap_report.write_report`` (samples carrying ``image`` and ``mask``)."""
    write_report(samples, scores, out_dir, root=data_root())


__all__ = [
    "METRICS",
    "ROOT_ENV",
    "STATE",
    "TEST_FILE",
    "CompositionCapError",
    "TaskScores",
    "TaskState",
    "aggregate",
    "check_record",
    "convert_nested",
    "data_root",
    "doc_image",
    "doc_mask",
    "doc_to_text",
    "doc_to_visual",
    "flatten_image",
    "process_results",
    "select_docs",
    "test_file",
    "variant_docs",
    "visual_prompt_style",
    "write_demo_folder",
    "write_extras",
]
