"""LLaVA's own ``llava.train.train.train()`` trains FineCaption checkpoints; ``finecaption-llava-train`` runs it.

Why: LLaVA's ``train()`` builds ``LlavaLlamaForCausalLM`` and LLaVA's data pipeline, and on transformers 5 and a
FineCaption checkpoint it meets: ``load_in_4bit=``/``load_in_8bit=`` keywords that ``from_pretrained`` no longer
takes, 4-bit settings that would quantise the projector into packed weights (``llm_int8_skip_modules`` names
``mm_projector``, FineCaption's is ``multi_modal_projector``), LoRA on every ``nn.Linear`` by its last name
(``find_all_linear_names``: CLIP's ``q_proj`` too), a vision tower cast to float16, dtype casts of every module
named ``norm`` and of the projector, a tokenizer without ``unk_token`` made the pad token, a data pipeline that
knows no masks nor the LLaMA-3 template, ``Trainer(tokenizer=...)`` (``processing_class`` in transformers 5), and
``import deepspeed`` when saving a LoRA run even without DeepSpeed (``maybe_zero_3``).

When ``--model_name_or_path`` is a FineCaption checkpoint, LLaVA's ``train()`` body runs unchanged with these
module names swapped, for that call only: the argument dataclasses (``finecaption_plugin.training_args``,
LLaVA's flags and transformers 5's renames; the seed set as ``finecaption train`` sets it),
``LlavaLlamaForCausalLM`` (a loader: ``quantization_config`` only, with the vision side, projector and
``lm_head`` unquantised), ``find_all_linear_names`` (the language model's projections,
``finecaption_plugin.lora.LORA_TARGETS``), ``make_supervised_data_module`` (``finecaption_plugin.data``: LLaVA
records with optional masks, the ``--version`` template, assistant-only labels) and ``LLaVATrainer`` (the
``finecaption train`` trainer, after ``lora.set_trainable``: the parts the flags train, in float32, whatever LLaVA
cast before) and ``maybe_zero_3`` (DeepSpeed imported only for a partitioned tensor). LLaVA's code saves as it
always does: the adapter, ``config.json`` and
``non_lora_trainables.bin`` (the fully trained parts, trained in place as LLaVA does), or the full model.
Other checkpoints train with LLaVA's own pieces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Sequence

from finecaption_plugin import training_args

MARK = "_finecaption_llava_train"
_RUN: dict = {}  # the current FineCaption run's parsed arguments and processor


def _model_path(argv: Sequence[str]) -> str | None:
    for index, arg in enumerate(argv):
        if arg == "--model_name_or_path" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--model_name_or_path="):
            return arg.split("=", 1)[1]
    return None


@dataclasses.dataclass
class ModelArguments(training_args.ModelArguments):
    """`finecaption_plugin.training_args.ModelArguments`, recorded for the run's other pieces."""

    def __post_init__(self):
        # LLaVA's train() builds a text-only LLaMA without --vision_tower; FineCaption's tower is in the checkpoint.
        if self.vision_tower is None:
            self.vision_tower = "finecaption"
        _RUN["model_args"] = self


@dataclasses.dataclass
class DataArguments(training_args.DataArguments):
    """`finecaption_plugin.training_args.DataArguments`, recorded for the run's other pieces."""

    def __post_init__(self):
        super().__post_init__()
        _RUN["data_args"] = self


@dataclasses.dataclass
class TrainingArguments(training_args.TrainingArguments):
    """`finecaption_plugin.training_args.TrainingArguments` (transformers 5's renames of LLaVA's flags), recorded;
    the seed is set here, before the model and LoRA initialise, as `finecaption train` sets it."""

    def __post_init__(self):
        from transformers import set_seed

        super().__post_init__()
        _RUN["training_args"] = self
        set_seed(self.seed)


class VisionTowerView:
    """What LLaVA's ``train()`` reads of ``model.get_vision_tower()``: the image processor; ``.to()`` keeps dtypes."""

    def __init__(self, image_processor):
        self.image_processor = image_processor
        self.is_loaded = True

    def to(self, *args, **kwargs):
        return self


class FineCaptionLoader:
    """Stands for ``LlavaLlamaForCausalLM`` in ``train()``: ``from_pretrained`` with LLaVA's keywords."""

    @staticmethod
    def from_pretrained(path, cache_dir=None, attn_implementation=None, torch_dtype=None, load_in_4bit=False,
                        load_in_8bit=False, quantization_config=None, device_map=None, **kwargs):  # fmt: skip
        import torch
        from transformers import AutoConfig, AutoProcessor

        from finecaption_plugin.lora import quantization_config as finecaption_quantization
        from finecaption_plugin.training_args import IMAGE_ASPECT_RATIOS, check_architecture_flags

        from .generate import llava_model_class

        model_args, data_args, training_args = _RUN["model_args"], _RUN["data_args"], _RUN["training_args"]
        config = AutoConfig.from_pretrained(path, cache_dir=cache_dir)
        check_architecture_flags(model_args, data_args, config)
        dtype = torch_dtype or (torch.float16 if training_args.fp16 else torch.float32)
        load_kwargs = dict(kwargs, config=config, dtype=dtype, cache_dir=cache_dir)
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        bits = 4 if load_in_4bit else 8 if load_in_8bit else 16
        if bits != 16:
            compute = getattr(quantization_config, "bnb_4bit_compute_dtype", None) or dtype
            load_kwargs["quantization_config"] = finecaption_quantization(
                bits, training_args.quant_type, training_args.double_quant, compute
            )
            load_kwargs["device_map"] = device_map
        model = llava_model_class().from_pretrained(path, **load_kwargs)
        processor = AutoProcessor.from_pretrained(path, cache_dir=cache_dir)
        processor.image_processor.aspect_ratio = IMAGE_ASPECT_RATIOS[data_args.image_aspect_ratio]
        _RUN["processor"] = processor
        model._llava_vision_tower = VisionTowerView(processor.image_processor)
        return model


def find_all_linear_names(model) -> str:
    """LoRA's targets: the language model's attention and MLP projections (a regex peft matches in full)."""
    from finecaption_plugin.lora import LORA_TARGETS

    return LORA_TARGETS


def make_supervised_data_module(tokenizer, data_args) -> dict:
    """FineCaption's dataset and collator for LLaVA records (optional masks) with the ``--version`` template."""
    from finecaption_plugin.conversation import get_template
    from finecaption_plugin.data import DataCollator, SupervisedDataset, build_samples, read_records

    model_args, training_args, processor = _RUN["model_args"], _RUN["training_args"], _RUN["processor"]
    if not data_args.data_path:
        raise ValueError("--data_path is required")
    template = get_template(model_args.version)
    samples = build_samples(read_records(data_args.data_path), template, data_args.image_folder,
                            allow_outside=data_args.allow_outside_data_folder)  # fmt: skip
    dataset = SupervisedDataset(samples, processor, template, data_args.image_folder, training_args.model_max_length)
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {"train_dataset": dataset, "eval_dataset": None, "data_collator": DataCollator(pad_id)}


def trainer(model, tokenizer=None, args=None, **data_module):
    """Stands for ``LLaVATrainer(...)``: what trains is set from the flags (float32), then the FineCaption trainer."""
    import logging

    from finecaption_plugin.lora import set_trainable, trained_parts
    from finecaption_plugin.train import build_trainer_class

    model_args, processor = _RUN["model_args"], _RUN["processor"]
    model.config.use_cache = False
    new_name = hasattr(args, "activation_checkpointing")  # transformers 5's name of --gradient_checkpointing
    checkpointing = "activation_checkpointing" if new_name else "gradient_checkpointing"
    if getattr(args, checkpointing) and getattr(args, f"{checkpointing}_kwargs") is None:
        setattr(args, f"{checkpointing}_kwargs", {"use_reentrant": False})
    counts = set_trainable(model, trained_parts(model_args, args), upcast=not args.deepspeed)
    logging.getLogger(__name__).info("trained parameters per part: %s", {k: v for k, v in counts.items() if v})
    return build_trainer_class()(model=model, args=args, processing_class=processor, **data_module)


def maybe_zero_3(param, ignore_status=False, name=None):
    """LLaVA's copy of a (maybe ZeRO-3 partitioned) tensor, without LLaVA's unconditional ``import deepspeed``."""
    from finecaption_plugin.lora import _gathered

    return _gathered(param)


def _model_methods(model_class: type) -> None:
    """LLaVA's model interface that ``train()`` calls (``get_model``, ``get_vision_tower``, ...)."""
    if getattr(model_class, MARK, False):
        return
    model_class.get_model = lambda self: self
    model_class.get_vision_tower = lambda self: self._llava_vision_tower
    model_class.initialize_vision_modules = lambda self, model_args=None, fsdp=None: None
    model_class.initialize_vision_tokenizer = lambda self, model_args=None, tokenizer=None: None
    model_class.mm_projector = property(lambda self: self.model.multi_modal_projector)
    setattr(model_class, MARK, True)


@contextlib.contextmanager
def finecaption_pieces(module):
    """Swap the FineCaption pieces into ``llava.train.train`` (``module``) for one call of ``train()``."""
    from .generate import llava_model_class

    _model_methods(llava_model_class())
    names = {
        "ModelArguments": ModelArguments,
        "DataArguments": DataArguments,
        "TrainingArguments": TrainingArguments,
        "LlavaLlamaForCausalLM": FineCaptionLoader,
        "find_all_linear_names": find_all_linear_names,
        "make_supervised_data_module": make_supervised_data_module,
        "LLaVATrainer": trainer,
        "maybe_zero_3": maybe_zero_3,
    }
    saved = {name: getattr(module, name) for name in names}
    for name, value in names.items():
        setattr(module, name, value)
    _RUN.clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
        _RUN.clear()


def patch() -> None:
    """Wrap ``llava.train.train.train``: FineCaption checkpoints train with FineCaption's pieces. Idempotent."""
    from llava.train import train as module

    original = module.train
    if getattr(original, MARK, False):
        return

    @functools.wraps(original)
    def train(attn_implementation=None):
        from .builder import is_finecaption

        path = _model_path(sys.argv[1:])
        if path is None or not is_finecaption(path):
            return original(attn_implementation=attn_implementation)
        with finecaption_pieces(module):
            return original(attn_implementation=attn_implementation)

    setattr(train, MARK, True)
    module.train = train


def main(argv: Sequence[str] | None = None) -> int:
    """``finecaption-llava-train``: LLaVA's ``train()`` (in place of ``llava/train/train_mem.py``), patched.
    ``--attn_implementation NAME`` (e.g. ``flash_attention_2``, as train_mem.py passes) is taken off the flags."""
    from . import apply

    argv = list(sys.argv[1:] if argv is None else argv)
    attn = None
    if "--attn_implementation" in argv:
        index = argv.index("--attn_implementation")
        attn = argv[index + 1]
        del argv[index : index + 2]
    apply()
    from llava.train import train as module

    sys.argv = [sys.argv[0], *argv]
    module.train(attn_implementation=attn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
