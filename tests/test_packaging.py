"""The wheel carries what an installed package needs beyond its modules: the shipped demo model, the lmms-eval
task folders and the patches' documentation. Built from a copy of the sources, so the checkout stays untouched."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_wheel_holds_demo_model_tasks_and_patches(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("finecaption_plugin", "tasks", "patches"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp_path / "dist",
         source],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # setuptools warns when package data sits in a folder that is not a declared package.
    assert "is absent from the `packages` configuration" not in result.stderr
    (wheel,) = (tmp_path / "dist").glob("finecaption_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    demo_model = ROOT / "finecaption_plugin" / "demo_model"
    shipped = {f"finecaption_plugin/demo_model/{path.name}" for path in demo_model.iterdir() if path.is_file()}
    assert "finecaption_plugin/demo_model/model.safetensors" in shipped
    assert shipped <= names
    task_files = {
        f"finecaption_plugin/tasks/{path.relative_to(ROOT / 'tasks').as_posix()}"
        for path in (ROOT / "tasks").rglob("*")
        if path.suffix in {".yaml", ".py"} and "__pycache__" not in path.parts
    }
    assert task_files and task_files <= names
    assert any(name.startswith("finecaption_plugin/patches/") and name.endswith(".md") for name in names)
