"""finecaption_plugin/metrics/tokenizer.py: PTB tokenisation as pycocoevalcap's, one line per caption."""

from __future__ import annotations

from caption_cases import PREDICTIONS
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from finecaption_plugin.metrics.tokenizer import ptb_tokenize


def test_tokenizer_matches_pycocoevalcap_and_keeps_one_line_per_caption() -> None:
    sentences = [*PREDICTIONS, "carriage\rreturn and\u2028line separator", "", "(left)"]
    tokens = ptb_tokenize(sentences)
    assert len(tokens) == len(sentences)
    expected = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(PREDICTIONS)})
    assert tokens[: len(PREDICTIONS)] == [expected[i][0] for i in range(len(PREDICTIONS))]
    assert tokens[len(PREDICTIONS) :] == ["carriage return and line separator", "", "-lrb- left -rrb-"]
    assert tokens[2] == "it is n't what they 're doing ca n't you see"
