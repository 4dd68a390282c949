"""The CompositionCap task folder (tasks/compositioncap): YAMLs, their generator, utils.py, lmms-eval loading."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from finecaption_plugin import compositioncap
from finecaption_plugin.cli import tasks_dir
from finecaption_plugin.compositioncap import CompositionCapError, write_demo_folder


@pytest.fixture(scope="module")
def task_manager():
    """One index of lmms-eval's tasks (slow to build) with the shipped tasks in it, without --include_path."""
    from lmms_eval.tasks import TaskManager

    from finecaption_plugin.lmms_eval_manifest import patch_lmms_eval

    patch_lmms_eval()
    return TaskManager()


@pytest.mark.parametrize(
    "name, model, style",
    [
        ("compositioncap_aarc", "finecaption", "mask"),
        ("compositioncap_aarc", "llava_hf", "bbox"),
        ("compositioncap_rdc_contour", "finecaption", "contour"),
        ("compositioncap_aarc_bbox_text", "qwen2_5_vl", "bbox_text"),
    ],
)
def test_yaml_picks_the_style_per_model_and_variant(
    root: Path, task_manager, monkeypatch: pytest.MonkeyPatch, name: str, model: str, style: str
):
    from lmms_eval.tasks import get_task_dict

    monkeypatch.setattr(task_manager, "model_name", model)  # what `--model` sets
    (task,) = get_task_dict([name], task_manager).values()
    assert task.lmms_eval_specific_kwargs["visual_prompt"] == style
    docs = task.test_docs()
    assert {doc["task"] for doc in docs} == {name.split("_")[1]} and set(docs["variant"]) == {name}
    assert task.doc_to_text(docs[0]).endswith(".")


def _task_module(name: str):
    """A module of the task folder, executed from its file as lmms-eval's ``!function`` does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(tasks_dir()) / "compositioncap" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shipped_task_names_its_own_docs():
    utils = _task_module("utils")
    assert not hasattr(utils, "__getattr__")  # explicit functions, none made up on lookup
    for path in sorted((Path(tasks_dir()) / "compositioncap").glob("compositioncap_*.yaml")):
        task = re.search(r"^task: (\S+)$", path.read_text(), re.M)
        if task:  # groups list their tasks
            assert f"process_docs: !function utils.{task.group(1)}_docs" in path.read_text(), path.name
        for function in re.findall(r"!function utils\.(\w+)", path.read_text()):
            assert callable(getattr(utils, function)), (path.name, function)


def test_the_checked_in_yamls_are_what_the_generator_writes(tmp_path: Path):
    folder = Path(tasks_dir()) / "compositioncap"
    command = [sys.executable, str(folder / "_generate_config.py"), str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True)
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(_task_module("_generate_config").configs())
    assert set(written) >= {path.name for path in folder.glob("*.yaml")}  # no YAML kept by hand beside them
    for name in written:
        assert (folder / name).read_bytes() == (tmp_path / name).read_bytes(), f"{name}: run _generate_config.py"


def test_each_task_s_metrics_are_the_generator_s_and_aggregate_through_utils():
    generator, utils = _task_module("_generate_config"), _task_module("utils")
    assert set(generator.TASK_METRICS) == {"aarc", "rdc", "global"}
    for metrics in generator.TASK_METRICS.values():
        assert metrics[: len(compositioncap.METRICS)] == list(compositioncap.METRICS)  # Table 2's, then the task's
        for metric in metrics:
            assert callable(getattr(utils, generator.aggregation_function(metric))), metric
    assert [generator.aggregation_function(name) for name in ("ROUGE-L", "BLEU-4")] == ["rouge_l", "bleu_4"]


def test_the_data_folder_is_needed_only_when_a_task_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from lmms_eval import utils as lmms_utils

    monkeypatch.delenv(compositioncap.ROOT_ENV, raising=False)
    paths = sorted((Path(tasks_dir()) / "compositioncap").glob("compositioncap*.yaml"))
    for path in paths:  # how lmms-eval indexes the folder: tags not executed
        assert lmms_utils.load_yaml_config(str(path), mode="simple")
    _task_module("utils")  # the hooks' module needs no data folder
    aarc = str(Path(tasks_dir()) / "compositioncap" / "compositioncap_aarc.yaml")
    with pytest.raises(CompositionCapError, match="COMPOSITIONCAP_ROOT is not set"):
        lmms_utils.load_yaml_config(aarc, mode="full")  # how lmms-eval loads a task it runs
    monkeypatch.setenv(compositioncap.ROOT_ENV, str(tmp_path))
    with pytest.raises(CompositionCapError, match="compositioncap_test.jsonl does not exist"):
        lmms_utils.load_yaml_config(aarc, mode="full")
    write_demo_folder(tmp_path, images=1)
    config = lmms_utils.load_yaml_config(aarc, mode="full")
    assert config["dataset_kwargs"]["data_files"] == {"test": str(tmp_path / compositioncap.TEST_FILE)}


@pytest.mark.parametrize("name", ["compositioncap_rdc", "compositioncap_global", "compositioncap_rdc_contour"])
def test_paragraph_tasks_do_not_stop_at_a_blank_line(root: Path, task_manager, name: str):
    from lmms_eval.tasks import get_task_dict

    (task,) = get_task_dict([name], task_manager).values()
    assert task.config.generation_kwargs["until"] == []


def test_the_readme_s_copied_task_yaml_resolves(root: Path, tmp_path: Path):
    from lmms_eval.tasks import TaskManager, get_task_dict

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (snippet,) = [block for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "_mine" in block]
    (hooks,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "_mine_docs" in block]
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    placeholder = "/path/printed/by/finecaption-tasks-dir"
    assert placeholder in snippet
    (folder / "compositioncap_rdc_mine.yaml").write_text(snippet.replace(placeholder, tasks_dir()))
    (folder / "utils.py").write_text(hooks)
    for model, phrase in (("qwen2_5_vl", "outlined in red"), ("llava_hf", "inside the red box")):
        manager = TaskManager(include_path=str(folder), model_name=model)
        (task,) = get_task_dict(["compositioncap_rdc_mine"], manager).values()
        docs = task.test_docs()
        assert len(docs) == 6 and set(docs["variant"]) == {"compositioncap_rdc_mine"}
        assert phrase in task.doc_to_text(docs[0])
