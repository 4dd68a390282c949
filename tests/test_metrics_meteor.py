"""finecaption_plugin/metrics/meteor.py: the METEOR process."""

from __future__ import annotations

import pytest

from finecaption_plugin.metrics.meteor import MeteorProcess


def test_dead_meteor_process_is_an_error_not_a_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINECAPTION_JAVA", "false")
    with MeteorProcess() as meteor, pytest.raises(RuntimeError, match="METEOR process ended early"):
        meteor.segment_stats(["a dog"], [["a dog"]])
