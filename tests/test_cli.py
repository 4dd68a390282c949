"""The ``finecaption`` command line (finecaption_plugin/cli.py): one parser, cheap to build."""

from __future__ import annotations

import subprocess
import sys

import pytest

from finecaption_plugin.cli import build_parser, main

HEAVY = ("torch", "transformers", "torchvision", "timm", "lmms_eval", "PIL", "numpy")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_help_imports_nothing_heavy():
    modules = _imported_after("from finecaption_plugin.cli import build_parser\nbuild_parser().format_help()")
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_package_import_registers_without_importing_torch():
    modules = _imported_after("import finecaption_plugin")
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_every_documented_command_is_there():
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("tasks-dir", "info", "create-tiny", "train", "convert", "merge", "score",
                 "compositioncap-demo", "compositioncap-convert", "visual-prompts"):  # fmt: skip
        assert name in commands


def test_no_library_module_builds_a_parser():
    """argparse lives in cli.py only (train's flags are HfArgumentParser over training_args' dataclasses)."""
    from pathlib import Path

    import finecaption_plugin

    package = Path(finecaption_plugin.__file__).parent
    users = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "import argparse" in path.read_text() and path.name != "cli.py"
    )
    assert users == []


def test_unknown_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "no-such-preset"])
    assert exit_info.value.code == 2
    assert "tiny" in capsys.readouterr().err


def test_tasks_dir_prints_the_shipped_folder(capsys):
    from finecaption_plugin.tasks import tasks_dir

    assert main(["tasks-dir"]) == 0
    assert capsys.readouterr().out.strip() == tasks_dir()


def test_visual_prompts_demo_as_a_module(tmp_path):
    """``python -m finecaption_plugin.visual_prompts --demo OUTDIR`` (README) answers through the CLI."""
    subprocess.run([sys.executable, "-m", "finecaption_plugin.visual_prompts", "--demo", str(tmp_path)], check=True)
    assert (tmp_path / "mask.png").is_file() and (tmp_path / "prompts.txt").is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"image": "a.png", "height": 4, "width": 4}\n{"image": "b.png",\n', r"line 2, column 19: not JSON"),
        ('{"image": "a.png", "height": 4, "width": 4, "entities": ["car"]}\n', r"line 1: .*field 'entities\[0\]'"),
    ],
)
def test_compositioncap_convert_names_the_bad_line_and_exits_2(tmp_path, capsys, text, message):
    import re

    source = tmp_path / "nested.jsonl"
    source.write_text(text)
    assert main(["compositioncap-convert", str(source), str(tmp_path / "flat.jsonl")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"finecaption: error: {source}: ") and re.search(message, error)
    assert "Traceback" not in error and not (tmp_path / "flat.jsonl").exists()


@pytest.mark.parametrize("flag", ["--tower-steps", "--refine-steps"])
def test_demo_init_refuses_negative_tower_steps_with_exit_2(tmp_path, capsys, flag):
    assert main(["demo-init", str(tmp_path / "init"), flag, "-1"]) == 2
    assert f"{flag} -1" in capsys.readouterr().err
    assert not (tmp_path / "init").exists()  # refused before anything was written
