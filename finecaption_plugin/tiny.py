"""Tiny random FineCaption checkpoints, built offline, for tests, demos and smoke runs.

The checkpoint has the full architecture and code path at toy widths (`FineCaptionConfig.from_preset("tiny")`),
a byte-level BPE tokenizer trained in-process on a fixed corpus with LLaMA-3's chat tokens, and a processor
with the `llama3` chat template. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Special tokens first, so their ids are fixed: the tiny preset's `pad_token_id`/`image_token_id` refer to them.
TINY_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<pad>",
    "<image>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
_CORPUS = (
    "The red car is parked beside a tall green tree on the left side of the street.",
    "A woman with long brown hair wears a blue jacket, black jeans and white shoes.",
    "The wooden table has a smooth texture and a rectangular shape, seen from a high camera viewpoint.",
    "A small dog sits on the grass and looks at the camera with a happy facial expression.",
    "Describe the region in detail: its category, color, material, shape and position.",
    "What is the color of the masked object? Answer in one sentence.",
    "user assistant system image region mask box contour caption attribute",
)


def build_tiny_tokenizer(vocab_size: int = 384, corpus: Sequence[str] | None = None):
    """A byte-level BPE `PreTrainedTokenizerFast` of at most `vocab_size` tokens, left-padding, trained offline on
    `corpus` (default: a fixed sample of captioning text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus or _CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )


def processor_for(config, tokenizer):
    """The processor (llama3 chat template) of a model of `config` around `tokenizer`; writes the tokenizer's
    BOS/EOS/padding ids into `config.text_config`, which must agree with them."""
    from .conversation import TEMPLATES
    from .image_processing_finecaption import FineCaptionImageProcessor
    from .processing_finecaption import FineCaptionProcessor

    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    return FineCaptionProcessor(
        image_processor=FineCaptionImageProcessor(image_size=config.image_size),
        tokenizer=tokenizer,
        chat_template=TEMPLATES["llama3"].chat_template,
        num_image_tokens=config.num_image_tokens,
    )


def create_tiny_checkpoint(
    path: str | Path, seed: int = 0, preset: str = "tiny", corpus: Sequence[str] | None = None
) -> Path:
    """Write a randomly initialised FineCaption checkpoint (model, tokenizer, processor) of `preset` to `path`.

    The tokenizer is learnt from `corpus` (default: a fixed sample) with the preset's `vocab_size` as its upper
    bound; the model's vocabulary is cut to the tokenizer's size when the corpus yields fewer tokens.
    """
    import torch

    from .configuration_finecaption import FineCaptionConfig
    from .modeling_finecaption import FineCaptionForConditionalGeneration

    path = Path(path)
    config = FineCaptionConfig.from_preset(preset)
    tokenizer = build_tiny_tokenizer(config.text_config.vocab_size, corpus)
    config.text_config.vocab_size = len(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id
    assert tokenizer.pad_token_id == config.pad_token_id
    processor = processor_for(config, tokenizer)

    torch.manual_seed(seed)
    model = FineCaptionForConditionalGeneration(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
