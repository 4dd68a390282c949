"""The LLaVA (``llava-torch`` 1.2.2.post1) fixes, applied together by ``apply()`` (see README.md beside this file).

``llava-torch`` pins torch 2.0.1 and transformers 4.36.2, so it sits beside this stack only when installed with
``pip install --no-deps llava-torch==1.2.2.post1``; ``apply()`` checks that this is the version installed, since
every patch here is written against its code. Nothing in LLaVA's files is edited: functions and module
attributes are replaced at run time, so call ``apply()`` before LLaVA's scripts run (``python -c`` wrapper, or
at the top of your own script), e.g.::

    from finecaption_plugin.patches import llava as llava_patches
    llava_patches.apply()
    from llava.model.builder import load_pretrained_model
"""

from __future__ import annotations

SUPPORTED_VERSION = "1.2.2.post1"
DISTRIBUTION = "llava-torch"


class LlavaVersionError(ImportError):
    """The installed ``llava`` is not ``llava-torch`` 1.2.2.post1 (or none is installed)."""


def installed_version() -> str | None:
    """The installed ``llava-torch`` version, or None."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def check_version() -> None:
    """Raise `LlavaVersionError` unless ``llava-torch`` 1.2.2.post1 is installed."""
    version = installed_version()
    if version != SUPPORTED_VERSION:
        found = f"llava-torch {version} is installed" if version else "llava-torch is not installed"
        raise LlavaVersionError(
            f"finecaption_plugin.patches.llava supports llava-torch {SUPPORTED_VERSION} only, but {found}; "
            f"install it with `pip install --no-deps {DISTRIBUTION}=={SUPPORTED_VERSION}` (--no-deps: its pins "
            "of torch 2.0.1 and transformers 4.36.2 would replace this stack)"
        )


def apply() -> None:
    """Check the LLaVA version, then make ``llava.train.train`` importable on transformers 5 and
    ``llava.model.builder.load_pretrained_model`` load FineCaption checkpoints, add the ``llava_llama_3``
    template, and keep the token after each ``<image>`` in ``tokenizer_image_token``. Idempotent."""
    check_version()
    from . import builder, conversation, image_token, train, trainer_layernorm

    trainer_layernorm.patch()
    builder.patch()
    conversation.patch()
    image_token.patch()
    train.patch()


__all__ = ["SUPPORTED_VERSION", "LlavaVersionError", "apply", "check_version", "installed_version"]
