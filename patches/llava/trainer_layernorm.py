"""``transformers.trainer.ALL_LAYERNORM_LAYERS`` again, so that ``llava.train.train`` imports on transformers 5.

Why: ``llava/train/llava_trainer.py`` does ``from transformers.trainer import ALL_LAYERNORM_LAYERS,
get_parameter_names, ...``; transformers 5 no longer re-exports the name from ``transformers.trainer`` (it still
lives in ``transformers.pytorch_utils``), so importing ``llava.train.train`` fails with ``ImportError: cannot
import name 'ALL_LAYERNORM_LAYERS'``. The shim puts the ``pytorch_utils`` list (the same object) back.
"""

from __future__ import annotations


def patch() -> None:
    """Give ``transformers.trainer`` its ``ALL_LAYERNORM_LAYERS`` back when it lacks it. Idempotent."""
    import transformers.trainer
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

    if not hasattr(transformers.trainer, "ALL_LAYERNORM_LAYERS"):
        transformers.trainer.ALL_LAYERNORM_LAYERS = ALL_LAYERNORM_LAYERS
