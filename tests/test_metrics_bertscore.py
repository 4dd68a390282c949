"""BERTScore: same numbers as bert-score itself, offline default, settings reported, paper setting."""

from __future__ import annotations

from pathlib import Path

import bert_score
import pytest

from finecaption_plugin.metrics import bertscore, caption_scores, resolve_setting
from finecaption_plugin.metrics.bertscore import BertScoreSetting, bert_f1

PREDICTIONS = ["a man in a red shirt stands by the door", "", "dog", "Café naïve 🙂"]
REFERENCES = [["a man wearing a red shirt", "someone at a door"], ["a cat"], ["a brown dog"], ["a café"]]


@pytest.fixture(scope="module")
def default_setting() -> BertScoreSetting:
    return resolve_setting()


def test_offline_default_is_labelled_not_comparable(default_setting: BertScoreSetting, monkeypatch) -> None:
    monkeypatch.delenv("FINECAPTION_BERTSCORE_MODEL", raising=False)
    assert default_setting.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert (Path(default_setting.path) / "model.safetensors").is_file()
    assert default_setting.describe() == {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "layer": 6,
        "rescaled": False,
        "idf": False,
        "comparable_to_paper": False,
    }


def test_same_numbers_as_bert_score(default_setting: BertScoreSetting) -> None:
    result = caption_scores(PREDICTIONS, REFERENCES, metrics=["BERTScore"], groups=["x", "y", "x", "y"])
    _, _, f1 = bert_score.score(
        PREDICTIONS[2:], REFERENCES[2:], model_type=default_setting.path, num_layers=default_setting.layer
    )
    ours = result["per_sample"]["BERTScore"]
    assert ours[2:] == pytest.approx([100 * v for v in f1.tolist()], abs=1e-4)
    assert ours[1] == 0.0  # bert-score's rule for an empty candidate, reached despite transformers 5
    assert 0 < ours[0] < 100
    assert result["BERTScore"] == pytest.approx(sum(ours) / 4)
    assert result["groups"]["x"]["BERTScore"] == pytest.approx((ours[0] + ours[2]) / 2)
    assert result["bertscore"]["comparable_to_paper"] is False


def test_rescaling_uses_the_baseline_row_of_the_layer(default_setting: BertScoreSetting, tmp_path) -> None:
    baseline = tmp_path / "baseline.tsv"
    baseline.write_text("LAYER,P,R,F\n" + "".join(f"{layer},0.1,0.2,{0.05 * layer}\n" for layer in range(7)))
    rescaled = BertScoreSetting("custom", default_setting.path, 6, True, str(baseline))
    raw = bert_f1(PREDICTIONS[:1], REFERENCES[:1], default_setting)
    assert bert_f1(PREDICTIONS[:1], REFERENCES[:1], rescaled) == pytest.approx([(raw[0] - 0.3) / 0.7], abs=1e-6)


def test_paper_setting_is_roberta_large_layer_17_rescaled(monkeypatch) -> None:
    monkeypatch.setattr(bertscore, "_local_folder", lambda name: f"/cache/{name}")  # no 1.4 GB download here
    setting = resolve_setting("roberta-large")
    assert (setting.model, setting.layer, setting.rescaled) == ("roberta-large", 17, True)
    assert setting.comparable_to_paper
    row_17 = Path(setting.baseline_path).read_text().splitlines()[18].split(",")
    assert [float(v) for v in row_17[1:]] == [0.83150584, 0.8314941, 0.83122575]
    assert not resolve_setting("roberta-large", layer=16).comparable_to_paper


def test_model_from_environment_and_argument(default_setting: BertScoreSetting, monkeypatch) -> None:
    monkeypatch.setenv("FINECAPTION_BERTSCORE_MODEL", default_setting.path)
    from_env = resolve_setting()
    assert (from_env.model, from_env.layer, from_env.rescaled) == (default_setting.path, 6, False)
    monkeypatch.setenv("FINECAPTION_BERTSCORE_MODEL", "finecaption-test/not-a-model")
    with pytest.raises(FileNotFoundError, match=r"not-a-model.*local Hugging Face cache.*hf download"):
        resolve_setting()
    assert resolve_setting(default_setting.path, layer=3).layer == 3


def test_missing_model_fails_before_any_scoring(monkeypatch) -> None:
    monkeypatch.setenv("FINECAPTION_BERTSCORE_MODEL", "finecaption-test/not-a-model")
    monkeypatch.setattr("finecaption_plugin.metrics.scores.ptb_tokenize", pytest.fail)
    with pytest.raises(FileNotFoundError):
        caption_scores(["a"], [["a"]])
