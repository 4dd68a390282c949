"""Auto registration (finecaption_plugin/registration.py): every Auto class finds FineCaption in any import order."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import finecaption_plugin as fp
from transformers import AutoConfig
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, MODEL_MAPPING,
)
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

config = AutoConfig.for_model("finecaption")
assert type(config) is fp.FineCaptionConfig
assert MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)] is fp.FineCaptionForConditionalGeneration
assert MODEL_FOR_CAUSAL_LM_MAPPING[type(config)] is fp.FineCaptionForConditionalGeneration
assert MODEL_MAPPING[type(config)] is fp.FineCaptionModel
assert type(config) in MODEL_MAPPING.keys()
assert IMAGE_PROCESSOR_MAPPING[type(config)] == {"torchvision": fp.FineCaptionImageProcessor,
                                                 "pil": fp.FineCaptionImageProcessor}
assert PROCESSOR_MAPPING[type(config)] is fp.FineCaptionProcessor
print("registered")
"""

ORDERS = [
    "import finecaption_plugin",
    "from transformers import AutoConfig, AutoProcessor, AutoModel\nimport finecaption_plugin",
    "import finecaption_plugin\nimport transformers.models.llama.modeling_llama",
    "import finecaption_plugin.modeling_finecaption",
    "import lmms_eval.models",  # the entry point imports the package during lmms-eval's plugin scan
]


@pytest.mark.parametrize("first", ORDERS)
def test_auto_classes_know_finecaption_whatever_was_imported_first(first):
    result = subprocess.run([sys.executable, "-c", f"{first}\n{CHECK}"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("registered"), result.stderr[-3000:]


def test_registration_is_idempotent():
    from transformers import AutoConfig

    import finecaption_plugin
    from finecaption_plugin.registration import register

    register()
    register()
    assert type(AutoConfig.for_model("finecaption")) is finecaption_plugin.FineCaptionConfig
