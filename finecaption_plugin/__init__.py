"""finecaption-plugin: FineCaption (mask-referring high-resolution regional captioning) for transformers & co.

Importing the package registers `model_type="finecaption"` with transformers' Auto classes, so
`AutoConfig`, `AutoModelForImageTextToText`, `AutoModelForCausalLM`, `AutoImageProcessor` and `AutoProcessor`
load FineCaption checkpoints from local folders, without `trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_finecaption import FineCaptionConfig
from .image_processing_finecaption import FineCaptionImageProcessor
from .modeling_finecaption import FineCaptionForConditionalGeneration, FineCaptionModel
from .processing_finecaption import FineCaptionProcessor

__version__ = "0.1.0"

AutoConfig.register(FineCaptionConfig.model_type, FineCaptionConfig, exist_ok=True)
AutoModel.register(FineCaptionConfig, FineCaptionModel, exist_ok=True)
AutoModelForImageTextToText.register(FineCaptionConfig, FineCaptionForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(FineCaptionConfig, FineCaptionForConditionalGeneration, exist_ok=True)
# One NumPy/PIL implementation serves both backend names: AutoImageProcessor asks for "torchvision" by default and,
# finding only "pil", would warn about a fallback on every load.
AutoImageProcessor.register(
    FineCaptionConfig,
    image_processor_classes={"torchvision": FineCaptionImageProcessor, "pil": FineCaptionImageProcessor},
    exist_ok=True,
)
AutoProcessor.register(FineCaptionConfig, FineCaptionProcessor, exist_ok=True)

__all__ = [
    "FineCaptionConfig",
    "FineCaptionForConditionalGeneration",
    "FineCaptionImageProcessor",
    "FineCaptionModel",
    "FineCaptionProcessor",
]
