"""finecaption-plugin: FineCaption (mask-referring high-resolution regional captioning) for transformers & co.

Importing the package registers `model_type="finecaption"` with transformers' Auto classes, so
`AutoConfig`, `AutoModelForImageTextToText`, `AutoModelForCausalLM`, `AutoImageProcessor` and `AutoProcessor`
load FineCaption checkpoints from local folders, without `trust_remote_code` (`registration`: each Auto
class learns it when transformers loads that class). The public classes below are imported on first use,
so the import itself costs next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .demo import demo_checkpoint
from .registration import register

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first attribute access, PEP 562).
_PUBLIC = {
    "FineCaptionConfig": ".configuration_finecaption",
    "FineCaptionForConditionalGeneration": ".modeling_finecaption",
    "FineCaptionImageProcessor": ".image_processing_finecaption",
    "FineCaptionModel": ".modeling_finecaption",
    "FineCaptionProcessor": ".processing_finecaption",
}

__all__ = [
    "FineCaptionConfig",
    "FineCaptionForConditionalGeneration",
    "FineCaptionImageProcessor",
    "FineCaptionModel",
    "FineCaptionProcessor",
    "demo_checkpoint",
]

if TYPE_CHECKING:
    from .configuration_finecaption import FineCaptionConfig
    from .image_processing_finecaption import FineCaptionImageProcessor
    from .modeling_finecaption import FineCaptionForConditionalGeneration, FineCaptionModel
    from .processing_finecaption import FineCaptionProcessor


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


register()
