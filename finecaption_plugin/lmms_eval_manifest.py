"""lmms-eval's entry point into the plugin (group ``lmms_eval.models``): the model manifest, and the patches.

lmms-eval loads every entry point of the group while it imports ``lmms_eval.models`` and skips *all*
of them if one raises, so this module adds no imports beyond the package's own (whose ``__init__``
registers the Auto classes) and ``model_manifests`` never raises; the model class loads on first use.
That call is also when ``finecaption_plugin.patches.lmms_eval`` is applied (see its README).
"""

from __future__ import annotations

import logging

from .patches import lmms_eval as lmms_eval_patches
from .patches.lmms_eval.exit_status import CLI_MODULE  # noqa: F401  (old import path)
from .patches.lmms_eval.exit_status import exit_on_failure as _exit_on_failure  # noqa: F401  (old import path)
from .patches.lmms_eval.exit_status import exit_on_unknown_tasks as _exit_on_unknown_tasks  # noqa: F401

logger = logging.getLogger(__name__)

MODEL_ID = "finecaption"
SIMPLE_CLASS_PATH = "finecaption_plugin.lmms_eval_model.FineCaption"
CHAT_CLASS_PATH = "finecaption_plugin.lmms_eval_model.FineCaptionChat"

patch_lmms_eval = lmms_eval_patches.apply  # old name


def model_manifests() -> list:
    """The manifest of ``--model finecaption``: the chat class, or the simple one with ``--force_simple``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    try:
        lmms_eval_patches.apply()
    except Exception:  # a failed fix must not cost lmms-eval every plugin model
        logger.warning('could not patch lmms-eval; pass --include_path "$(finecaption tasks-dir)"', exc_info=True)
    return [
        ModelManifest(model_id=MODEL_ID, simple_class_path=SIMPLE_CLASS_PATH, chat_class_path=CHAT_CLASS_PATH)
    ]
