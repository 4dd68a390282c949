"""finecaption_plugin.prompts: the task instructions shared by training and evaluation."""

import pytest

from finecaption_plugin.prompts import TASKS, task_prompt


def test_aarc_prompt_names_attribute_and_region():
    assert task_prompt("aarc", "body pose/gesture") == "Describe the body pose/gesture of the masked region."
    assert task_prompt("aarc", "color", region="the region in the red box") == (
        "Describe the color of the region in the red box."
    )


def test_rdc_and_global_prompts():
    assert "the masked region" in task_prompt("rdc")
    assert "region" not in task_prompt("global")
    assert len({task_prompt(t, "color") for t in TASKS}) == 3


@pytest.mark.parametrize("task, attribute", [("aarc", None), ("aarc", ""), ("dense", None)])
def test_bad_task_or_missing_attribute(task, attribute):
    with pytest.raises(ValueError, match=task if task != "aarc" else "attribute"):
        task_prompt(task, attribute)
