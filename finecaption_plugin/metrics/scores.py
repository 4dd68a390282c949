"""``caption_scores``: pycocoevalcap's caption metrics and BERTScore in one call, x100."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider_scorer import CiderScorer
from pycocoevalcap.rouge.rouge import Rouge

from ..records import is_caption
from .bertscore import bert_f1, resolve_setting
from .meteor import MeteorProcess
from .tokenizer import ptb_tokenize

logger = logging.getLogger(__name__)

BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
# The paper's Table 2 metrics, in its order, by their keys in ``caption_scores``' result (the CompositionCap
# tasks report these).
TABLE_METRICS = ("ROUGE-L", "BLEU-4", "METEOR", "CIDEr", "BERTScore")
# The names ``caption_scores(metrics=...)`` selects by: BLEU stands for its four orders (``"BLEU-4"`` etc. work too).
METRICS = tuple("BLEU" if key in BLEU_KEYS else key for key in TABLE_METRICS)
SCORE_KEYS = (*BLEU_KEYS, "METEOR", "ROUGE-L", "CIDEr", "BERTScore")

# Per-sample scores of one metric (or of BLEU-1..4), and the metric over a subset of the samples.
Aggregate = Callable[[Sequence[int]], dict[str, float]]
Scored = tuple[dict[str, list[float]], Aggregate]


class CaptionInputError(ValueError):
    """A prediction, reference list or group that cannot be scored; names the record and field."""

    def __init__(self, message: str, record: int | None = None) -> None:
        super().__init__(message if record is None else f"record {record}: {message}")
        self.record = record


def caption_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] | None = None,
    groups: Sequence[Hashable] | None = None,
    *,
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
    device: str | None = None,
) -> dict:
    """Score captions as pycocoevalcap (PTB tokenizer, Bleu(4), Meteor, Rouge, Cider) and bert-score do.

    Args:
        predictions: one caption per sample (may be empty).
        references: a non-empty list of non-empty reference captions per sample.
        metrics: any of ``METRICS`` (``"BLEU-4"`` etc. select BLEU); default all.
        groups: a label per sample (e.g. its attribute) for a breakdown per group.
        bertscore_model, bertscore_layer: see ``bertscore.resolve_setting`` (default: the offline
            MiniLM, or ``$FINECAPTION_BERTSCORE_MODEL``).

    Returns:
        ``{"n": N, "BLEU-1": .., "BLEU-4": .., "METEOR": .., "ROUGE-L": .., "CIDEr": .., "BERTScore": ..,
        "per_sample": {key: [N floats]}, "groups": {str(label): {"n": k, key: ..}},
        "bertscore": {"model", "layer", "rescaled", "idf", "comparable_to_paper"}}``, every score on the
        x100 scale, keys only for the metrics asked for, "groups" only with ``groups``. BLEU and METEOR
        of a group are corpus scores over its samples, exactly what pycocoevalcap gives for that
        subset; ROUGE-L, CIDEr and BERTScore are means of the per-sample scores. CIDEr's document
        frequencies always come from the references of the whole call (as for the paper's number), so
        the groups' CIDEr, weighted by "n", average to the overall CIDEr; pycocoevalcap run on a group
        alone would use that group's frequencies instead.
    """
    selected = _select(metrics)
    _check_inputs(predictions, references, groups)
    setting = resolve_setting(bertscore_model, bertscore_layer) if "BERTScore" in selected else None
    scored: list[Scored] = []
    with ExitStack() as stack:
        meteor = pending_meteor = None
        if "METEOR" in selected:
            # The pool is entered first so that, on an error, METEOR is killed before the pool waits for it.
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            # Started first: METEOR's JVM spends seconds loading its paraphrase table while we tokenise.
            meteor = stack.enter_context(MeteorProcess())
        if selected - {"BERTScore"}:
            hypotheses, tokenized_refs = tokenize_pairs(predictions, references)
            if meteor is not None:
                pending_meteor = pool.submit(meteor.segment_stats, hypotheses, tokenized_refs)
            if "BLEU" in selected:
                scored.append(_bleu(hypotheses, tokenized_refs))
            if "ROUGE-L" in selected:
                scored.append(_rouge(hypotheses, tokenized_refs))
            if "CIDEr" in selected:
                scored.append(_cider(hypotheses, tokenized_refs))
        if setting is not None:  # on the untokenised captions, as bert-score expects
            f1 = {"BERTScore": bert_f1(predictions, references, setting, device=device)}
            scored.append((f1, _mean_of(f1)))
        if pending_meteor is not None:
            scored.append(_meteor(meteor, pending_meteor.result()))
        result = _collect(scored, len(predictions), groups)
    if setting is not None:
        result["bertscore"] = setting.describe()
    return result


def resolve_metric_names(metrics: Sequence[str] | None) -> set[str]:
    """The ``METRICS`` names a ``metrics=`` selection stands for (``ValueError`` for an unknown name)."""
    return _select(metrics)


def _select(metrics: Sequence[str] | None) -> set[str]:
    if metrics is None:
        return set(METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    known = {name.lower(): name for name in METRICS} | {key.lower(): "BLEU" for key in BLEU_KEYS}
    unknown = [name for name in metrics if name.lower() not in known]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    return {known[name.lower()] for name in metrics}


def _check_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str]], groups: Sequence[Hashable] | None
) -> None:
    if isinstance(predictions, str) or len(predictions) != len(references):
        raise CaptionInputError(
            f"predictions and references must be sequences of the same length, got "
            f"{type(predictions).__name__} of {len(predictions)} and {len(references)}"
        )
    if not predictions:
        raise CaptionInputError("no predictions to score")
    if groups is not None and len(groups) != len(predictions):
        raise CaptionInputError(f"groups has {len(groups)} labels for {len(predictions)} predictions")
    for index, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        _check_text(prediction, index, "prediction")
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not refs:
            raise CaptionInputError(
                f"field 'references': expected a non-empty list of strings, got {refs!r:.80}", index
            )
        for position, reference in enumerate(refs):
            _check_text(reference, index, f"references[{position}]")
            if not is_caption(reference):
                raise CaptionInputError(f"field 'references[{position}]': empty reference", index)


# The longest caption scored: METEOR's JVM and the PTB tokenizer hold each caption whole (a 10 MB caption runs
# METEOR out of heap). CompositionCap's longest references are a few thousand characters.
MAX_CAPTION_CHARS = 20_000
MAX_CAPTION_CHARS_ENV = "FINECAPTION_MAX_CAPTION_CHARS"


def max_caption_chars() -> int:
    """``$FINECAPTION_MAX_CAPTION_CHARS``, else ``MAX_CAPTION_CHARS``: a longer caption is refused before scoring."""
    import os

    value = os.environ.get(MAX_CAPTION_CHARS_ENV, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else MAX_CAPTION_CHARS


def _check_text(text: object, index: int, field: str) -> None:
    if not isinstance(text, str):
        raise CaptionInputError(f"field '{field}': expected a string, got {type(text).__name__}", index)
    limit = max_caption_chars()
    if len(text) > limit:
        raise CaptionInputError(
            f"field '{field}': {len(text)} characters, over the limit of {limit} per caption "
            f"(${MAX_CAPTION_CHARS_ENV} raises it)",
            index,
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise CaptionInputError(f"field '{field}': not valid Unicode text ({error})", index) from None


def tokenize_pairs(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """PTB tokens of every prediction and reference, in one tokenizer run, in the shape they came in."""
    logger.info("PTB-tokenising %d predictions and their references", len(predictions))
    tokens = ptb_tokenize([*predictions, *(ref for refs in references for ref in refs)])
    hypotheses, rest = tokens[: len(predictions)], iter(tokens[len(predictions) :])
    return hypotheses, [[next(rest) for _ in refs] for refs in references]


def _bleu(hypotheses: list[str], references: list[list[str]]) -> Scored:
    scorer = BleuScorer(n=4)
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        scorer += (hypothesis, refs)
    _, per_sample = scorer.compute_score(option="closest", verbose=0)

    def aggregate(indices: Sequence[int]) -> dict[str, float]:
        subset = BleuScorer(n=4)
        subset.crefs = [scorer.crefs[i] for i in indices]
        subset.ctest = [scorer.ctest[i] for i in indices]
        corpus, _ = subset.compute_score(option="closest", verbose=0)
        return dict(zip(BLEU_KEYS, corpus, strict=True))

    return dict(zip(BLEU_KEYS, per_sample, strict=True)), aggregate


def _rouge(hypotheses: list[str], references: list[list[str]]) -> Scored:
    rouge = Rouge()
    per_sample = {"ROUGE-L": [rouge.calc_score([h], refs) for h, refs in zip(hypotheses, references, strict=True)]}
    return per_sample, _mean_of(per_sample)


def _cider(hypotheses: list[str], references: list[list[str]]) -> Scored:
    if not any(ref for refs in references for ref in refs):
        raise CaptionInputError("CIDEr is undefined: every reference is empty after PTB tokenisation")
    scorer = CiderScorer(n=4, sigma=6.0)
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        scorer += (hypothesis, refs)
    _, per_sample = scorer.compute_score()
    per_sample = {"CIDEr": per_sample.tolist()}
    return per_sample, _mean_of(per_sample)


def _meteor(meteor: MeteorProcess, stats: list[str]) -> Scored:
    def aggregate(indices: Sequence[int]) -> dict[str, float]:
        return {"METEOR": meteor.corpus_score([stats[i] for i in indices])}

    return {"METEOR": meteor.segment_scores(stats)}, aggregate


def _mean_of(per_sample: dict[str, list[float]]) -> Aggregate:
    arrays = {key: np.asarray(values) for key, values in per_sample.items()}
    return lambda indices: {key: float(np.mean(values[list(indices)])) for key, values in arrays.items()}


def _collect(scored: list[Scored], n: int, groups: Sequence[Hashable] | None) -> dict:
    """Overall, per-sample and per-group scores, x100, in ``SCORE_KEYS`` order."""
    everyone = range(n)
    overall: dict[str, float] = {}
    per_sample: dict[str, list[float]] = {}
    for samples, aggregate in scored:
        overall |= aggregate(everyone)
        per_sample |= samples
    result: dict = {"n": n, **_x100(overall)}
    result["per_sample"] = {key: [100 * float(v) for v in per_sample[key]] for key in SCORE_KEYS if key in per_sample}
    if groups is not None:
        members: dict[str, list[int]] = {}
        for index, label in enumerate(groups):
            members.setdefault(str(label), []).append(index)
        result["groups"] = {
            label: {"n": len(indices), **_x100({k: v for _, agg in scored for k, v in agg(indices).items()})}
            for label, indices in sorted(members.items())
        }
    return result


def _x100(scores: dict[str, float]) -> dict[str, float]:
    return {key: 100 * float(scores[key]) for key in SCORE_KEYS if key in scores}
