"""`finecaption score FILE`: our JSONL and lmms-eval samples logs, table, JSON, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from finecaption_plugin.cli import main
from finecaption_plugin.metrics import caption_scores

RECORDS = [
    {
        "prediction": "A dog runs on the grass.",
        "references": ["a dog running on grass", "the dog runs"],
        "group": "pose",
    },
    {"prediction": "a red car (left)", "references": ["A red car parked on the left."], "group": "color"},
    {"prediction": "", "references": ["A cat sleeps."], "group": "pose"},
]
FAST = ["--metrics", "BLEU", "ROUGE-L", "CIDEr"]  # METEOR's and BERTScore's own tests cover those


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" if not isinstance(r, str) else r + "\n" for r in records))
    return path


def test_scores_jsonl_prints_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = write_jsonl(tmp_path / "preds.jsonl", RECORDS)
    assert main(["score", str(source), *FAST]) == 0
    written = json.loads((tmp_path / "preds.scores.json").read_text())
    expected = caption_scores(
        [r["prediction"] for r in RECORDS],
        [r["references"] for r in RECORDS],
        metrics=["BLEU", "ROUGE-L", "CIDEr"],
        groups=[r["group"] for r in RECORDS],
    )
    assert written == expected
    assert written["groups"]["pose"]["n"] == 2
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["group", "n", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    assert table[1].split()[:2] == ["all", "3"]
    assert float(table[1].split()[-1]) == pytest.approx(expected["CIDEr"], abs=0.006)
    assert [line.split()[0] for line in table[2:4]] == ["color", "pose"]


def test_reads_lmms_eval_samples_log(tmp_path: Path) -> None:
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(tmp_path))
    tracker.general_config_tracker.model_name_sanitized = "finecaption"
    tracker.date_id = "run"
    samples = [
        {
            "doc_id": i,
            "doc": {"id": i},
            "target": record["references"],
            "arguments": ["Describe the region.", {"max_new_tokens": 8}],
            "resps": [[record["prediction"]]],
            "filtered_resps": [record["prediction"]],
            "compositioncap_cider": {"attribute": record["group"], "prediction": record["prediction"]},
        }
        for i, record in enumerate(RECORDS)
    ]
    tracker.save_results_samples("compositioncap_aarc", samples)
    log = tmp_path / "finecaption" / "run_samples_compositioncap_aarc.jsonl"
    out = tmp_path / "scores.json"
    assert main(["score", str(log), "-o", str(out), "--group-field", "attribute", *FAST]) == 0
    from_log = json.loads(out.read_text())
    direct = write_jsonl(tmp_path / "direct.jsonl", RECORDS)
    assert main(["score", str(direct), *FAST]) == 0
    assert from_log == json.loads((tmp_path / "direct.scores.json").read_text())


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", r"line 2, column 2: not JSON"),
        ({"prediction": "a cat"}, r"line 2, record 1: field 'references': expected a non-empty list"),
        ({"prediction": 7, "references": ["a"]}, r"line 2, record 1: field 'prediction': expected a string"),
        ({"answer": "a"}, r"line 2: neither 'prediction' nor lmms-eval's 'filtered_resps'"),
    ],
)
def test_bad_record_is_named(tmp_path: Path, capsys: pytest.CaptureFixture, bad_line: object, message: str) -> None:
    source = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], bad_line, RECORDS[1]])
    assert main(["score", str(source), *FAST]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"finecaption score: {source}:")
    assert re.search(message, error)
    assert not (tmp_path / "bad.scores.json").exists()


# Hostile input and lost work (issue 12)


def test_a_10_mb_caption_is_refused_before_meteor_runs(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch):
    import finecaption_plugin.metrics.meteor as meteor

    started = []
    monkeypatch.setattr(meteor.MeteorProcess, "__init__", lambda self, *a, **k: started.append(1))
    huge = {"prediction": "word " * (2 * 2**20), "references": ["a caption"]}  # 10 MB: METEOR's JVM ran out of heap
    source = write_jsonl(tmp_path / "huge.jsonl", [RECORDS[0], huge])
    assert main(["score", str(source)]) == 2
    error = capsys.readouterr().err
    assert re.search(r"line 2, record 1: field 'prediction': 10485760 characters, over the limit of 20000", error)
    assert "FINECAPTION_MAX_CAPTION_CHARS" in error and "Traceback" not in error and not started
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "huge.scores.json").exists()


def test_an_unwritable_output_is_found_before_scoring(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch):
    import finecaption_plugin.metrics.scores as scores

    scored = []
    monkeypatch.setattr(scores, "caption_scores", lambda *a, **k: scored.append(1))
    source = write_jsonl(tmp_path / "preds.jsonl", RECORDS)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # root writes into read-only folders; a file where the folder should be stops anyone
    assert main(["score", str(source), "-o", str(blocker / "out.json"), *FAST]) == 2
    assert capsys.readouterr().err.startswith(f"finecaption score: cannot write {blocker / 'out.json'}: ")
    assert not scored

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full)  # the probe write, flushed, finds the full disk
    assert main(["score", str(source), "-o", str(tmp_path / "out.json"), *FAST]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"finecaption score: cannot write {tmp_path / 'out.json'}: No space left on device")
    assert not scored and not list(tmp_path.glob("*.partial"))


def test_a_disk_that_fills_during_the_write_keeps_the_table(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch):
    import json as json_module

    source = write_jsonl(tmp_path / "preds.jsonl", RECORDS)
    real_dump = json_module.dump

    def dump_then_full(obj, file, **kwargs):
        real_dump(obj, file, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("finecaption_plugin.metrics.command.json.dump", dump_then_full)
    assert main(["score", str(source), "-o", str(tmp_path / "out.json"), *FAST]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("group") and "CIDEr" in captured.out  # the table came first
    assert f"cannot write {tmp_path / 'out.json'}: No space left on device" in captured.err
    assert not (tmp_path / "out.json").exists() and not list(tmp_path.glob("*.partial"))


def test_bertscore_flags_without_bertscore_are_an_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    source = write_jsonl(tmp_path / "preds.jsonl", RECORDS)
    assert main(["score", str(source), *FAST, "--bertscore-model", "roberta-large"]) == 2
    assert "--bertscore-model given, but BERTScore is not among --metrics" in capsys.readouterr().err
    assert not (tmp_path / "preds.scores.json").exists()
