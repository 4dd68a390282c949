"""Caption metrics as the paper reports them (ROUGE-L, BLEU, METEOR, CIDEr, BERTScore, x100).

Numbers equal pycocoevalcap's (PTB tokenizer, Bleu(4), Meteor, Rouge, Cider) on the same inputs, with
one tokenizer run and one METEOR process per call; BERTScore comes from bert-score.
"""

from .bertscore import BERTSCORE_MODEL_ENV, BertScoreSetting, resolve_setting
from .java import JavaNotFoundError, find_java
from .scores import METRICS, SCORE_KEYS, CaptionInputError, caption_scores

__all__ = [
    "BERTSCORE_MODEL_ENV",
    "METRICS",
    "SCORE_KEYS",
    "BertScoreSetting",
    "CaptionInputError",
    "JavaNotFoundError",
    "caption_scores",
    "find_java",
    "resolve_setting",
]
