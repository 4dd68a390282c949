"""``llava.mm_utils.tokenizer_image_token`` drops a chunk's first token only when it is an automatic BOS.

Why: LLaVA tokenises the prompt in pieces split at ``<image>`` and, when the first piece starts with BOS,
drops the first token of every later piece, assuming the tokenizer put a BOS there (LLaMA-2's sentencepiece
tokenizer does). With LLaMA-3's template the prompt itself starts with ``<|begin_of_text|>``, and a tokenizer
that adds no BOS of its own (FineCaption's) loses a real token after each image: the ``\\n`` after
``<image>``, so the model sees a prompt it was never trained on. The replacement drops a later piece's first
token only when it is a BOS the text of that piece does not hold; for LLaVA's own tokenizers the ids are
unchanged.
"""

from __future__ import annotations

import functools
import sys

MARK = "_finecaption_tokenizer_image_token"


def tokenizer_image_token(prompt, tokenizer, image_token_index=-200, return_tensors=None):
    """``prompt`` with ``<image>`` placeholders -> ids, each placeholder as ``image_token_index``."""
    bos_id, bos_text = tokenizer.bos_token_id, tokenizer.bos_token
    input_ids = []
    for index, chunk in enumerate(prompt.split("<image>")):
        ids = tokenizer(chunk).input_ids
        if index:
            input_ids.append(image_token_index)
            if ids and bos_id is not None and ids[0] == bos_id and not (bos_text and chunk.startswith(bos_text)):
                ids = ids[1:]
        input_ids.extend(ids)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        import torch

        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors}")


def patch() -> None:
    """Replace ``llava.mm_utils.tokenizer_image_token`` (and the copies LLaVA's modules imported). Idempotent."""
    from llava import mm_utils

    original = mm_utils.tokenizer_image_token
    if getattr(original, MARK, False):
        return
    patched = functools.wraps(original)(tokenizer_image_token)
    setattr(patched, MARK, True)
    mm_utils.tokenizer_image_token = patched
    for name, module in list(sys.modules.items()):
        if name.startswith("llava.") and getattr(module, "tokenizer_image_token", None) is original:
            module.tokenizer_image_token = patched
