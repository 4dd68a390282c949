"""``finecaption train``: fine-tune FineCaption with LLaVA's ``train.py`` flags, on transformers' Trainer.

Launch it as LLaVA's script is launched, with only the entry point changed::

    torchrun --nproc_per_node 8 -m finecaption_plugin.train --deepspeed scripts/zero3.json ...
    deepspeed --module finecaption_plugin.train --deepspeed scripts/zero2.json --bits 4 ...
    accelerate launch -m finecaption_plugin.train ...
    finecaption train ...

A LoRA run writes, in every ``checkpoint-N`` and in ``--output_dir``, the adapter, ``config.json`` and
``non_lora_trainables.bin`` (LLaVA's layout); the adapter holds the fully trained parts too, as peft's
``modules_to_save``, and ``finecaption merge`` folds it into a plain checkpoint.
A run restarted with the same ``--output_dir`` resumes from its last complete checkpoint.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from finecaption_plugin.allocator import keep_freed_memory

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"


def parse_args(argv: Sequence[str] | None):
    """LLaVA's three groups of flags -> (ModelArguments, DataArguments, TrainingArguments)."""
    from transformers import HfArgumentParser

    from finecaption_plugin.training_args import DataArguments, ModelArguments, TrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), prog="finecaption train")
    return parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` was written in full (Trainer writes it last).

    A checkpoint whose state file is missing, truncated or not JSON (a kill or a full disk during the save) is
    passed over, with a warning, for the one before it.
    """
    steps = []
    for path in Path(output_dir).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / TRAINER_STATE).is_file():
            steps.append((int(step), path))
    for _, path in sorted(steps, reverse=True):
        try:
            state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            logger.warning("%s: %s is incomplete (%s): resuming from an earlier checkpoint", path, TRAINER_STATE, error)
            continue
        if isinstance(state, dict) and "global_step" in state:
            return path
        logger.warning("%s: %s holds no global_step: resuming from an earlier checkpoint", path, TRAINER_STATE)
    return None


class DiskFullError(OSError):
    """The disk filled up while the run wrote a checkpoint or its outputs."""


class CheckpointMismatchError(ValueError):
    """The checkpoint to resume from was written by another model than the one the command builds."""


# Config entries that say how a model was loaded or run, not what it is.
_RUNTIME_CONFIG_KEYS = frozenset({"transformers_version", "dtype", "torch_dtype", "use_cache", "architectures"})


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the entries both configs hold with different values (sub-configs compared entry by entry)."""
    differences = []
    for key in sorted(saved.keys() & current.keys()):
        if key.startswith("_") or key in _RUNTIME_CONFIG_KEYS:
            continue
        if isinstance(saved[key], dict) and isinstance(current[key], dict):
            differences += _config_differences(saved[key], current[key], f"{prefix}{key}.")
        elif saved[key] != current[key]:
            differences.append(f"{prefix}{key}")
    return differences


def check_resumable(checkpoint: str | Path, config) -> None:
    """Raise `CheckpointMismatchError` when `checkpoint`'s `config.json` describes another model than `config`
    (a stale `--output_dir` of an earlier run): resuming would otherwise fail deep in the optimizer's state, or
    silently mix two models' weights."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        return
    differences = _config_differences(json.loads(path.read_text(encoding="utf-8")), config.to_dict())
    if differences:
        shown = ", ".join(differences[:5]) + (f" and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise CheckpointMismatchError(
            f"{checkpoint}: this checkpoint, which the run would resume from, was written by another model "
            f"(config differs in {shown}): give a new --output_dir, or remove the old run's checkpoints"
        )


def _disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) is a failed write for want of space: ENOSPC, or torch's serializer's
    "file write failed", which never says why."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, RuntimeError) and ("file write failed" in str(error) or "No space left" in str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _free_space(path: str | Path) -> str:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def compute_dtype(training_args):
    import torch

    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def load_model(model_args, training_args):
    """The FineCaption checkpoint at ``--model_name_or_path``, quantised for ``--bits 4|8``."""
    from transformers import AutoConfig

    from finecaption_plugin import FineCaptionForConditionalGeneration  # the package registers the model type
    from finecaption_plugin.lora import quantization_config

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required")
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    if config.model_type != "finecaption":
        raise ValueError(
            f"{model_args.model_name_or_path} is a {config.model_type!r} checkpoint; turn a LLaVA-HR one "
            "into FineCaption with `finecaption convert --from llava-hr SRC DST`"
        )
    dtype = compute_dtype(training_args)
    quantization = quantization_config(
        training_args.bits, training_args.quant_type, training_args.double_quant, dtype
    )
    kwargs = {}
    if quantization is not None:
        # bitsandbytes quantises while loading, on the device that trains.
        kwargs = {"quantization_config": quantization, "device_map": {"": training_args.device}}
    return FineCaptionForConditionalGeneration.from_pretrained(
        model_args.model_name_or_path, config=config, dtype=dtype, cache_dir=training_args.cache_dir, **kwargs
    )


def load_projector(model, path: str) -> None:
    """Load a stage-1 ``mm_projector.bin`` (LLaVA's or ours) into the projector."""
    import torch

    from finecaption_plugin.convert import rename_projector_key

    state = torch.load(path, map_location="cpu", weights_only=True)
    projector = {rename_projector_key(key): value for key, value in state.items()}
    missing, unexpected = model.model.multi_modal_projector.load_state_dict(projector, strict=False)
    if missing or unexpected:
        raise ValueError(f"--pretrain_mm_mlp_adapter {path}: missing {missing}, unexpected {unexpected}")


def build_trainer_class():
    """`FineCaptionTrainer`, defined lazily so that the CLI starts without importing transformers."""
    import torch
    from transformers import Trainer

    from finecaption_plugin.data import ModalityLengthGroupedSampler
    from finecaption_plugin.lora import save_non_lora_trainables

    class FineCaptionTrainer(Trainer):
        """Trainer with LLaVA's projector learning rate, modality grouping and non-LoRA checkpoint file."""

        def _get_train_sampler(self, train_dataset=None):
            if self.args.group_by_modality_length:
                dataset = train_dataset if train_dataset is not None else self.train_dataset
                return ModalityLengthGroupedSampler(
                    dataset.modality_lengths,
                    self.args.train_batch_size * self.args.world_size,
                    self.args.seed,
                )
            return super()._get_train_sampler(train_dataset)

        def create_optimizer(self, model=None) -> torch.optim.Optimizer:
            if self.args.mm_projector_lr is None or self.optimizer is not None:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    groups.setdefault(("multi_modal_projector" in name, name in decay), []).append(param)
            param_groups = [
                {
                    "params": params,
                    "weight_decay": self.args.weight_decay if decayed else 0.0,
                    **({"lr": self.args.mm_projector_lr} if projector else {}),
                }
                for (projector, decayed), params in groups.items()
            ]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
            return self.optimizer

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            # Runs inside every checkpoint save, before the trainer state that marks it complete.
            super().save_model(output_dir, _internal_call)
            if getattr(self.model, "peft_config", None) is None:
                return
            output_dir = output_dir or self.args.output_dir
            save_non_lora_trainables(self.model, output_dir, write=self.args.should_save)
            if self.args.should_save:
                self.model.get_base_model().config.save_pretrained(output_dir)

    return FineCaptionTrainer


def train(model_args, data_args, training_args):
    """Run (or resume) a training run -> the finished `FineCaptionTrainer` (its model, state and logs)."""
    from transformers import AutoProcessor, set_seed
    from transformers.integrations import is_deepspeed_zero3_enabled

    from finecaption_plugin.conversation import get_template
    from finecaption_plugin.data import DataCollator, SupervisedDataset, build_samples, read_records
    from finecaption_plugin.lora import (
        NON_LORA_FILE,
        add_lora,
        load_non_lora_trainables,
        saved_modules,
        set_trainable,
        trained_parts,
    )
    from finecaption_plugin.training_args import IMAGE_ASPECT_RATIOS, check_architecture_flags

    set_seed(training_args.seed)  # LoRA's initialisation comes before the Trainer seeds
    if training_args.bits in (4, 8) and is_deepspeed_zero3_enabled():
        raise ValueError("--bits 4/8 (QLoRA) cannot run under ZeRO-3: use scripts/zero2.json or plain DDP")
    template = get_template(model_args.version)
    parts = trained_parts(model_args, training_args)
    if not data_args.data_path:
        raise ValueError("--data_path is required")
    # Every record, image and mask is checked before anything loads: a bad one is named now, not at its step.
    samples = build_samples(
        read_records(data_args.data_path),
        template,
        data_args.image_folder,
        allow_outside=data_args.allow_outside_data_folder,
        progress=training_args.local_rank in (-1, 0) and not training_args.disable_tqdm,
    )
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path, cache_dir=training_args.cache_dir
    )
    processor.image_processor.aspect_ratio = IMAGE_ASPECT_RATIOS[data_args.image_aspect_ratio]
    dataset = SupervisedDataset(
        samples, processor, template, data_args.image_folder, training_args.model_max_length
    )
    logger.info("%d training samples from %s", len(dataset), data_args.data_path)

    model = load_model(model_args, training_args)
    check_architecture_flags(model_args, data_args, model.config)
    model.config.use_cache = False
    if model_args.pretrain_mm_mlp_adapter:
        load_projector(model, model_args.pretrain_mm_mlp_adapter)
    # transformers 5.x names it activation checkpointing (TrainingArguments maps LLaVA's --gradient_checkpointing);
    # the Trainer reads the new name, and reading or writing the old one warns.
    new_name = hasattr(training_args, "activation_checkpointing")
    checkpointing = "activation_checkpointing" if new_name else "gradient_checkpointing"
    if getattr(training_args, checkpointing) and getattr(training_args, f"{checkpointing}_kwargs") is None:
        # Non-reentrant checkpointing needs no input gradients through the frozen embeddings.
        setattr(training_args, f"{checkpointing}_kwargs", {"use_reentrant": False})
    resume = training_args.resume_from_checkpoint or last_complete_checkpoint(training_args.output_dir)
    # A LoRA checkpoint saved before modules_to_save holds the fully trained parts only in LLaVA's file (its
    # adapter has the LoRA layers alone, which peft cannot load beside modules_to_save): such a run goes on in
    # its own layout, the parts trained in place and restored from that file.
    if resume is not None:
        check_resumable(resume, model.config)
    old_layout = training_args.lora_enable and resume is not None and not saved_modules(resume)
    if training_args.lora_enable:
        # The fully trained parts as peft's modules_to_save: saved in the adapter, restored with it on resume.
        model = add_lora(model, training_args, set() if old_layout else parts)
    counts = set_trainable(model, parts, upcast=not training_args.deepspeed)
    logger.info("trained parameters per part: %s", {k: v for k, v in counts.items() if v})

    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
    trainer = build_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollator(pad_id),
        processing_class=processor,
    )

    if resume is not None:
        logger.info("resuming from %s%s", resume, " (saved before modules_to_save)" if old_layout else "")
        if old_layout and not training_args.deepspeed:
            # (DeepSpeed's own checkpoint holds every trained weight, partitioned, and restores them.)
            load_non_lora_trainables(model, Path(resume) / NON_LORA_FILE)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        trainer.save_state()
        trainer.save_model(training_args.output_dir)
        if training_args.should_save:
            processor.save_pretrained(training_args.output_dir)
    except (OSError, RuntimeError) as error:
        if not _disk_full(error):
            raise
        raise DiskFullError(
            errno.ENOSPC,
            f"no space left on device while writing to {training_args.output_dir} "
            f"({_free_space(training_args.output_dir)}): free some space (or use --save_total_limit) and run the "
            "same command again; it resumes from the last complete checkpoint",
        ) from error
    return trainer


def main(argv: Sequence[str] | None = None) -> int:
    """``finecaption train``: 0 when the run finished; 2 for bad training data (the record and field named on
    stderr, no traceback); 1 when the disk filled up."""
    from finecaption_plugin.conversation import ConversationError
    from finecaption_plugin.data import DataError

    model_args, data_args, training_args = parse_args(argv)
    keep_freed_memory()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    try:
        train(model_args, data_args, training_args)
    except (DataError, ConversationError, CheckpointMismatchError) as error:
        print(f"finecaption train: error: {error}", file=sys.stderr)
        return 2
    except DiskFullError as error:
        print(f"finecaption train: error: {error.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
