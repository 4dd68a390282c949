"""caption_scores against pycocoevalcap run directly, quirks and edge cases included."""

from __future__ import annotations

import numpy as np
import pytest
from caption_cases import GROUPS, PREDICTIONS, REFERENCES
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from finecaption_plugin.metrics import CaptionInputError, caption_scores


def coco_scores(
    predictions: list[str], references: list[list[str]], meteor: Meteor
) -> dict[str, tuple[float, list[float]]]:
    """pycocoevalcap as lmms-eval's coco_cap runs it: PTBTokenizer, then each scorer; x100."""
    gts = {i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": prediction}] for i, prediction in enumerate(predictions)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{k + 1}": (bleu[k], bleu_each[k]) for k in range(4)}
    out["METEOR"] = meteor.compute_score(gts, res)
    out["ROUGE-L"] = Rouge().compute_score(gts, res)
    out["CIDEr"] = Cider().compute_score(gts, res)
    return {key: (100 * float(total), [100 * float(v) for v in each]) for key, (total, each) in out.items()}


@pytest.fixture(scope="module")
def ours() -> dict:
    return caption_scores(PREDICTIONS, REFERENCES, metrics=["BLEU", "METEOR", "ROUGE-L", "CIDEr"], groups=GROUPS)


@pytest.fixture(scope="module")
def coco_meteor() -> Meteor:
    return Meteor()  # one JVM for every pycocoevalcap call here: its start takes seconds


@pytest.fixture(scope="module")
def reference(coco_meteor: Meteor) -> dict:
    return coco_scores(PREDICTIONS, REFERENCES, coco_meteor)


@pytest.mark.parametrize("key", ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"])
def test_identical_to_pycocoevalcap(ours: dict, reference: dict, key: str) -> None:
    tolerance = 1e-4 if key == "METEOR" else 1e-6
    total, each = reference[key]
    assert ours[key] == pytest.approx(total, abs=tolerance)
    assert ours["per_sample"][key] == pytest.approx(each, abs=tolerance)


def test_quirky_cases_are_really_scored(ours: dict) -> None:
    per_sample = ours["per_sample"]
    assert per_sample["CIDEr"][5] == 0 and per_sample["ROUGE-L"][5] == 0  # empty prediction
    assert per_sample["METEOR"][8] > 0 and per_sample["ROUGE-L"][8] > 0  # 400-word prediction
    assert per_sample["BLEU-1"][7] > 0  # unicode words match after lowercasing


def test_groups_match_pycocoevalcap_on_each_subset(ours: dict, coco_meteor: Meteor) -> None:
    for label in ("pose", "color"):
        indices = [i for i, group in enumerate(GROUPS) if group == label]
        subset = coco_scores([PREDICTIONS[i] for i in indices], [REFERENCES[i] for i in indices], coco_meteor)
        scores = ours["groups"][label]
        assert scores["n"] == len(indices)
        for key in ("BLEU-1", "BLEU-4", "ROUGE-L"):
            assert scores[key] == pytest.approx(subset[key][0], abs=1e-6)
        assert scores["METEOR"] == pytest.approx(subset["METEOR"][0], abs=1e-4)


def test_group_cider_uses_whole_set_frequencies(ours: dict) -> None:
    groups = ours["groups"]
    weighted = sum(scores["n"] * scores["CIDEr"] for scores in groups.values()) / ours["n"]
    assert weighted == pytest.approx(ours["CIDEr"], abs=1e-9)
    indices = [i for i, group in enumerate(GROUPS) if group == "pose"]
    assert groups["pose"]["CIDEr"] == pytest.approx(np.mean([ours["per_sample"]["CIDEr"][i] for i in indices]))


def test_metric_subset_and_names() -> None:
    result = caption_scores(["a dog runs"], [["a dog runs fast"]], metrics=["bleu-4", "ROUGE-L"])
    assert set(result) == {"n", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "per_sample"}
    with pytest.raises(ValueError, match="unknown metric"):
        caption_scores(["a"], [["a"]], metrics=["SPICE"])


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        (["a", 3], [["a"], ["b"]], r"record 1: field 'prediction': expected a string, got int"),
        (["a", "b"], [["a"], "b"], r"record 1: field 'references': expected a non-empty list"),
        (["a"], [[]], r"record 0: field 'references': expected a non-empty list"),
        (["a"], [["ok", "  "]], r"record 0: field 'references\[1\]': empty reference"),
        (["a\ud800"], [["a"]], r"record 0: field 'prediction': not valid Unicode"),
        (["a"], [["a"], ["b"]], r"same length"),
    ],
)
def test_bad_input_names_record_and_field(predictions: list, references: list, message: str) -> None:
    with pytest.raises(CaptionInputError, match=message):
        caption_scores(predictions, references, metrics=["ROUGE-L"])


def test_no_samples_is_an_error_not_a_zero() -> None:
    with pytest.raises(CaptionInputError, match="no predictions"):
        caption_scores([], [])
