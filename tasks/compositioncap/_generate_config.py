"""Writes this folder's CompositionCap task YAMLs: ``python _generate_config.py [FOLDER]``, then commit them.

Edit the tables below, never the YAMLs: ``tests/test_tasks_compositioncap.py`` fails when the checked-in
files differ from what this script writes. The files:

- ``_default_template.yaml``: what every task shares (data, hooks, the visual prompt per model);
- ``compositioncap_<task>.yaml`` for each task of ``TASKS``: its records, metrics and generation settings;
- ``compositioncap_<task>_<style>.yaml`` for each regional task and each ``VISUAL_PROMPT_STYLES`` style: the
  region shown in that style to every model;
- the groups ``compositioncap`` (the tasks) and ``compositioncap_<style>`` (the regional tasks in that
  style, and ``global``, which shows no region).

The YAMLs name the functions of ``utils.py`` (each metric's by ``aggregation_function``) and the data file
of ``data_file.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from finecaption_plugin.compositioncap_scoring import ATTRIBUTE_ACCURACY, METRICS
from finecaption_plugin.prompts import TASKS as TASK_NAMES
from finecaption_plugin.visual_prompts import VISUAL_PROMPT_STYLES

# Task -> (what it asks for, max_new_tokens, answers are paragraphs).
TASKS = {
    "aarc": ("attribute-aware regional captioning: one caption about one attribute of the region", 128, False),
    "rdc": ("regional dense captioning: a paragraph covering every attribute of the region", 512, True),
    "global": ("comprehensive global image captioning: a dense paragraph for the whole image", 512, True),
}
REGIONAL = ("aarc", "rdc")  # the tasks about one region; global describes the whole image
# The lmms-eval metric_list of each task: the paper's Table 2 metrics, and a task's own after them.
TASK_METRICS = {
    "aarc": [*METRICS, ATTRIBUTE_ACCURACY],  # NaN on data without each entity's truth (real CompositionCap)
    "rdc": [*METRICS],
    "global": [*METRICS],
}
HEADER = "# Written by _generate_config.py (edit that, then run it).\n"


def aggregation_function(metric: str) -> str:
    """The ``utils.py`` function aggregating ``metric``: ``ROUGE-L`` -> ``rouge_l``, ``BLEU-4`` -> ``bleu_4``."""
    return re.sub(r"\W", "_", metric.lower())


def template() -> str:
    return (
        HEADER
        + """\
# Shared by the CompositionCap tasks. Data: $COMPOSITIONCAP_ROOT/compositioncap_test.jsonl (see README.md).
dataset_path: json
dataset_kwargs:
  data_files:
    test: !function data_file.test_file
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: captions
process_results: !function utils.process_results
# How the region is shown: FineCaption reads the mask; other models get a box drawn on the image.
# The *_<style> task variants force one style for every model.
lmms_eval_specific_kwargs:
  default:
    visual_prompt: bbox
  finecaption:
    visual_prompt: mask
metadata:
  version: 0.1
"""
    )


def task(name: str) -> str:
    description, max_new_tokens, paragraphs = TASKS[name]
    until = (
        """  # A paragraph may hold blank lines: stop at the end of text only (lmms-eval's default stops at "\\n\\n").
  until: []
"""
        if paragraphs
        else ""
    )
    metrics = "".join(
        f"""  - metric: {metric}
    aggregation: !function utils.{aggregation_function(metric)}
    higher_is_better: true
"""
        for metric in TASK_METRICS[name]
    )
    return f"""{HEADER}# CompositionCap, {description}.
include: _default_template.yaml
task: compositioncap_{name}
process_docs: !function utils.compositioncap_{name}_docs
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  num_beams: 1
  do_sample: false
{until}# Each metric is computed once over the whole task (CIDEr's document frequencies need the whole set).
metric_list:
{metrics}"""


def variant(name: str, style: str) -> str:
    return f"""{HEADER}# compositioncap_{name} with the region shown as "{style}" to every model.
include: compositioncap_{name}.yaml
task: compositioncap_{name}_{style}
process_docs: !function utils.compositioncap_{name}_{style}_docs
lmms_eval_specific_kwargs:
  default:
    visual_prompt: {style}
"""


def group(name: str, comment: str, tasks: list[str]) -> str:
    listed = "".join(f"  - {task}\n" for task in tasks)
    return f"{HEADER}# {comment}\ngroup: {name}\ntask:\n{listed}"


def configs() -> dict[str, str]:
    """File name -> text of every file this script writes."""
    assert set(TASKS) == set(TASK_NAMES) == set(TASK_METRICS), "a task of prompts.TASKS without its settings"
    files = {"_default_template.yaml": template()}
    files |= {f"compositioncap_{name}.yaml": task(name) for name in TASKS}
    files |= {
        f"compositioncap_{name}_{style}.yaml": variant(name, style)
        for name in REGIONAL
        for style in VISUAL_PROMPT_STYLES
    }
    files["compositioncap.yaml"] = group(
        "compositioncap",
        "The three CompositionCap tasks, each model with its default visual prompt (FineCaption: mask; others: bbox).",
        [f"compositioncap_{name}" for name in TASKS],
    )
    for style in VISUAL_PROMPT_STYLES:
        files[f"compositioncap_{style}.yaml"] = group(
            f"compositioncap_{style}",
            f'The CompositionCap tasks with the region shown as "{style}" to every model (global needs no region).',
            [*(f"compositioncap_{name}_{style}" for name in REGIONAL), "compositioncap_global"],
        )
    return files


def write_configs(folder: str | Path) -> list[Path]:
    """Write every file of ``configs()`` into ``folder``; the paths written."""
    paths = []
    for name, text in configs().items():
        paths.append(Path(folder) / name)
        paths[-1].write_text(text, encoding="utf-8")
    return paths


if __name__ == "__main__":
    for path in write_configs(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent):
        print(f"Saving to {path}")
