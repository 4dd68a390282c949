"""Peak training memory of QLoRA against bf16 LoRA on the same FineCaption model and batch, as a ratio.

Each mode runs in its own process (peak memory only grows) through the training code path of
``finecaption train``: `load_model` (NF4 for QLoRA), `add_lora`, `set_trainable`, gradient checkpointing,
bf16 autocast and AdamW steps on one synthetic masked batch.

- CPU (default): the tiny vision side with a 0.5 B LLaMA (8 layers, width 2048, 32k vocabulary) whose decoder
  layers hold most weights (73 %; 81 % in FineCaption-8B). Memory = the process's peak RSS (VmHWM) above its RSS after
  imports, counted apart while loading (bitsandbytes quantises from bf16 shards) and while training, with the
  weights copied out of the checkpoint's mmap.
- GPU (``--device cuda``): the full ``finecaption-8b`` shape at 1024 px, batch 1; random weights serve for
  memory. Memory = ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``, what the card must hold),
  again apart for loading and training.
Step time is the median over the steps after the first.

    python benchmarks/bench_qlora_memory.py                   # CPU ratio -> results/qlora_memory_cpu.json
    python benchmarks/bench_qlora_memory.py --device cuda     # FineCaption-8B on a GPU (goal: QLoRA < 16 GB)
                                                              # -> results/qlora_memory_cuda.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

MODES = ("qlora", "lora-bf16")
SUMMARY_KEYS = (
    "train_peak_gib",
    "resident_before_training_gib",
    "load_peak_gib",
    "parameter_gib",
    "step_seconds",
)
# bf16 matrix products are slow on CPUs without bf16 units: a LLaMA small enough for minutes, whose decoder
# layers (quantised by QLoRA) still hold most weights, as in FineCaption-8B.
CPU_TEXT_CONFIG = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
    vocab_size=32000,
)  # fmt: skip


def _config(args):
    from finecaption_plugin import FineCaptionConfig

    if args.device == "cpu":
        return FineCaptionConfig.from_preset("tiny", text_config=CPU_TEXT_CONFIG)
    return FineCaptionConfig.from_preset(args.preset)


def make_checkpoint(args) -> None:
    """Write a random bf16 checkpoint of the benchmark's shape to ``args.checkpoint``."""
    import torch

    from finecaption_plugin import FineCaptionForConditionalGeneration

    config = _config(args)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = FineCaptionForConditionalGeneration(config)
    model.save_pretrained(args.checkpoint)


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """The process's peak resident set since start or the last `_reset_peak_rss` (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> None:
    """Return freed heap to the OS, then restart the peak-RSS count (Linux's clear_refs "5")."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def _batch(config, args, device):
    import torch

    generator = torch.Generator().manual_seed(0)
    image_tokens = torch.full((args.batch_size, config.num_image_tokens), config.image_token_id)
    text = torch.randint(
        10, config.text_config.vocab_size, (args.batch_size, args.text_tokens), generator=generator
    )
    input_ids = torch.cat([text[:, :8], image_tokens, text[:, 8:]], dim=1)
    labels = torch.cat(
        [torch.full_like(input_ids[:, : 8 + config.num_image_tokens], -100), text[:, 8:]], dim=1
    )
    size = config.image_size
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "pixel_values": torch.randn(args.batch_size, 3, size, size, generator=generator),
        "mask_values": (torch.rand(args.batch_size, 1, size, size, generator=generator) > 0.5).float(),
    }
    return {key: value.to(device) for key, value in batch.items()}


def run_mode(args) -> dict:
    """Train ``args.steps`` steps in mode ``args.child``; returns peak memory and step times."""
    import bitsandbytes  # noqa: F401  (imported before the baseline: both modes load the same libraries)
    import peft  # noqa: F401
    import torch

    from finecaption_plugin.lora import add_lora, set_trainable
    from finecaption_plugin.train import load_model

    cuda = args.device == "cuda"
    baseline = _rss_bytes()
    training_args = SimpleNamespace(
        bits=4 if args.child == "qlora" else 16,
        quant_type="nf4",
        double_quant=True,
        bf16=True,
        fp16=False,
        device=torch.device("cuda", 0) if cuda else torch.device("cpu"),
        cache_dir=None,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.05,
        lora_bias="none",
    )
    model = load_model(SimpleNamespace(model_name_or_path=args.checkpoint), training_args)
    if training_args.bits == 16:
        model.to(training_args.device)  # the 4-bit model is loaded onto the device already
    if not cuda:
        # Weights loaded from safetensors stay views of its mmap, counted in RSS only once touched (QLoRA
        # touches them all while quantising): copying them out makes both modes count the same memory.
        for tensor in (*model.parameters(), *model.buffers()):
            if not hasattr(tensor, "quant_state"):
                tensor.data = tensor.data.clone()
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # As `finecaption train`: the fully trained parts become peft modules_to_save, trained copies beside the originals.
    parts = {"mask", "connector", "projector"}
    model = add_lora(model, training_args, parts)
    counts = set_trainable(model, parts, upcast=True)
    model.train()
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = _batch(model.get_base_model().config, args, args.device)

    # Peak while loading (bitsandbytes quantises from the bf16 shards) and peak while training, apart.
    if cuda:
        load_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        load_peak = _peak_rss_bytes() - baseline
        _reset_peak_rss()
    resident = torch.cuda.memory_allocated() if cuda else _rss_bytes() - baseline
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    train_peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes() - baseline
    reserved = {"train_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)} if cuda else {}
    return {
        "mode": args.child,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "train_peak_bytes": train_peak,
        "train_peak_gib": round(train_peak / 2**30, 3),
        **reserved,
        "load_peak_gib": round(load_peak / 2**30, 3),
        "resident_before_training_gib": round(resident / 2**30, 3),
        "parameter_gib": round(parameter_bytes / 2**30, 3),
        "step_seconds": round(statistics.median(times[1:] or times), 3),
        "trained_parameters": sum(counts.values()),
        "losses": [round(value, 4) for value in losses],
    }


def _child(args, mode: str | None, *extra: str) -> str:
    command = [sys.executable, __file__, "--device", args.device, "--preset", args.preset, "--checkpoint"]
    command += [
        str(args.checkpoint),
        "--batch-size",
        str(args.batch_size),
        "--text-tokens",
        str(args.text_tokens),
    ]
    command += ["--steps", str(args.steps), "--lora-r", str(args.lora_r), *extra]
    if not args.gradient_checkpointing:
        command.append("--no-gradient-checkpointing")
    if mode is not None:
        command += ["--child", mode]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--preset", default="finecaption-8b", help="model shape on cuda (cpu: tiny + mid LLaMA)"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=48, help="text tokens beside the image tokens")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--output", type=Path, help="results JSON (default: results/qlora_memory_<device>.json)")
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--make-checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.make_checkpoint:
        make_checkpoint(args)
        return
    if args.child:
        print(json.dumps(run_mode(args)))
        return
    with tempfile.TemporaryDirectory() as folder:
        args.checkpoint = Path(folder) / "random-checkpoint"
        _child(args, None, "--make-checkpoint")
        results = {mode: json.loads(_child(args, mode).strip().splitlines()[-1]) for mode in MODES}
    for result in results.values():
        print(json.dumps(result))
    qlora, lora = results["qlora"], results["lora-bf16"]
    summary = {
        "device": qlora["device"],
        "batch_size": args.batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "train_peak_ratio_qlora_over_bf16_lora": round(
            qlora["train_peak_bytes"] / lora["train_peak_bytes"], 3
        ),
        "parameter_ratio_qlora_over_bf16_lora": round(qlora["parameter_gib"] / lora["parameter_gib"], 3),
        **{f"{key}_{mode.replace('-', '_')}": results[mode][key] for mode in MODES for key in SUMMARY_KEYS},
    }
    if "train_peak_reserved_gib" in qlora:  # the goal: a 16 GB consumer card holds what QLoRA reserves
        summary["qlora_fits_16_gib"] = qlora["train_peak_reserved_gib"] < 16
    print(json.dumps(summary))
    output = args.output or Path(__file__).parent / "results" / f"qlora_memory_{args.device}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"summary": summary, "runs": results}, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
