"""Instructions for the three FineCaption tasks, shared by training data and the lmms-eval tasks.

The paper defines the tasks but does not print its instruction strings, so these are our wording of
its task definitions (Hua et al., CVPR 2025, section 3):

| task     | instruction                                                              |
|----------|--------------------------------------------------------------------------|
| `aarc`   | `Describe the {attribute} of {region}.`                                  |
| `rdc`    | `Describe {region} in detail, covering all of its attributes.`           |
| `global` | `Describe the image in detail.`                                          |

``{region}`` names how the region is shown: "the masked region" for a mask fed to the model; a
visual prompt drawn on the image uses its own phrase (e.g. "the region in the red box").
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("aarc", "rdc", "global")
DEFAULT_REGION = "the masked region"

PROMPT_TEMPLATES: dict[str, str] = {
    "aarc": "Describe the {attribute} of {region}.",
    "rdc": "Describe {region} in detail, covering all of its attributes.",
    "global": "Describe the image in detail.",
}


def task_prompt(task: str, attribute: str | None = None, region: str = DEFAULT_REGION) -> str:
    """The instruction for ``task`` ("aarc", "rdc" or "global"); ``attribute`` is required for "aarc"."""
    if task not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task == "aarc" and not attribute:
        raise ValueError("task 'aarc' needs an attribute (e.g. 'color', 'body pose/gesture')")
    return PROMPT_TEMPLATES[task].format(attribute=attribute, region=region)
