"""The ``finecaption`` command line: every sub-command's flags, each calling one library function.

This is the only module that builds ``argparse`` parsers. Each handler imports its library inside the
function, so building the parser (``finecaption --help``) imports nothing heavy: no torch, no transformers.
``finecaption train`` is the exception that proves the rule: its flags are LLaVA's ``train.py`` flags,
parsed by ``HfArgumentParser`` over the dataclasses of ``training_args`` (the library's schema), so this
module only hands the raw arguments over.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .demo import DEMO_TEST_IMAGES, DEMO_TEST_SEED
from .tasks import tasks_dir

__all__ = ["build_parser", "main", "tasks_dir", "visual_prompts_demo"]

Handler = Callable[[argparse.Namespace], int]


# -- handlers: one library call each -------------------------------------------------------------------


def _tasks_dir(_: argparse.Namespace) -> int:
    print(tasks_dir())
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from .configuration_finecaption import FineCaptionConfig
    from .info import describe

    print(json.dumps(describe(FineCaptionConfig.from_preset(args.preset)), indent=2))
    return 0


def _preset(name: str) -> str:
    """``finecaption info``'s argument type: a preset name (checked lazily, so ``--help`` stays cheap)."""
    from .configuration_finecaption import PRESETS

    if name not in PRESETS:
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(sorted(PRESETS))})")
    return name


def _create_tiny(args: argparse.Namespace) -> int:
    from .tiny import create_tiny_checkpoint

    print(create_tiny_checkpoint(args.directory, seed=args.seed))
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import main as train_main

    return train_main(args.args)


def _log_progress() -> None:
    """Show the library's INFO logs (what a long command did: conversion, merging, tower pretraining)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _convert(args: argparse.Namespace) -> int:
    from .convert import ConversionError, convert_llava_hr

    _log_progress()
    try:
        print(convert_llava_hr(args.src, args.dst, args.alpha_clip, args.version, clip_heads=args.clip_heads))
    except ConversionError as error:
        return _input_error(str(error))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .merge import merge_lora

    _log_progress()
    print(merge_lora(args.model_path, args.model_base, args.save_model_path))
    return 0


def _score(args: argparse.Namespace) -> int:
    from .metrics.command import run

    return run(args)


def _compositioncap_demo(args: argparse.Namespace) -> int:
    from .compositioncap import write_demo_folder

    print(write_demo_folder(args.directory, images=args.images, seed=args.seed))
    return 0


def _compositioncap_convert(args: argparse.Namespace) -> int:
    from .compositioncap import convert_nested
    from .records import CompositionCapError

    try:
        count = convert_nested(args.source, args.target)
    except CompositionCapError as error:
        return _input_error(f"{args.source}: {error}")
    except OSError as error:
        return _input_error(str(error))
    print(f"{count} records written to {args.target}")
    return 0


def _visual_prompts(args: argparse.Namespace) -> int:
    from .visual_prompts import write_demo

    for path in write_demo(args.demo):
        print(path)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .synth import write_synth

    print(write_synth(args.directory, args.images, seed=args.seed, format=args.format, size=args.size))
    return 0


def _input_error(message: str) -> int:
    """A command-line input error: the message on stderr, exit status 2, no traceback."""
    print(f"finecaption: error: {message}", file=sys.stderr)
    return 2


def _caption(args: argparse.Namespace) -> int:
    import json

    from .caption import RegionsFileError, caption_file, caption_image, instruction, load_captioner, read_regions
    from .masks import MaskError

    if (args.image is None) == (args.regions is None):
        return _input_error("give an IMAGE (with --mask ...) or --regions FILE, not both")
    if args.regions is not None and not args.output:
        return _input_error("--regions needs --output FILE (the JSONL of captions)")
    if args.attribute and args.task not in (None, "aarc"):
        return _input_error("--attribute goes with --task aarc")
    try:
        prompt = instruction(args.prompt, "aarc" if args.attribute and not args.task else args.task, args.attribute)
        regions = read_regions(args.regions, args.image_folder, args.prompt) if args.regions is not None else None
        captioner = load_captioner(args.model, dtype=args.dtype, device=args.device, batch_size=args.batch_size)
        settings = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
        if regions is not None:
            count = caption_file(captioner, regions, args.output, **settings)
            print(f"{count} captions written to {args.output}", file=sys.stderr)
            return 0
        captions = caption_image(captioner, args.image, args.mask, prompt, **settings)
    except (ValueError, OSError, MaskError, RegionsFileError) as error:
        return _input_error(str(error))
    for mask, caption in zip(args.mask or [None], captions, strict=True):
        print(json.dumps({"mask": mask, "prompt": prompt, "caption": caption}) if args.json else caption)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, run_demo

    try:
        run_demo(
            args.output, images=args.images, seed=args.seed, limit=args.limit, batch_size=args.batch_size,
            model=args.model,
        )  # fmt: skip
    except DemoError as error:
        print(f"finecaption demo: {error}", file=sys.stderr)
        return 1
    return 0


def _demo_init(args: argparse.Namespace) -> int:
    from .allocator import keep_freed_memory
    from .demo import create_demo_init

    for flag, steps in (("--tower-steps", args.tower_steps), ("--refine-steps", args.refine_steps)):
        if steps < 0:
            return _input_error(f"{flag} {steps}: expected 0 or more")
    _log_progress()
    keep_freed_memory()
    print(create_demo_init(args.directory, args.seed, args.tower_steps, args.refine_steps))
    return 0


def _demo_export(args: argparse.Namespace) -> int:
    from .demo import DEMO_MODEL_DIR, export_demo

    print(export_demo(args.run, args.target or DEMO_MODEL_DIR))
    return 0


# -- the parser ------------------------------------------------------------------------------------------


# Each sub-command's handler and its line in ``finecaption --help`` (which lists them in build_parser's order).
COMMANDS: dict[str, tuple[Handler, str]] = {
    "tasks-dir": (_tasks_dir, "print the lmms-eval tasks folder shipped in the package"),
    "info": (_info, "parameter and image-token counts of a preset (JSON)"),
    "create-tiny": (_create_tiny, "write a tiny random FineCaption checkpoint (same architecture, toy widths)"),
    "train": (_train, "fine-tune FineCaption (LLaVA train.py flags + TrainingArguments; --help for all)"),
    "convert": (_convert, "turn a LLaVA-HR checkpoint into a FineCaption checkpoint"),
    "merge": (_merge, "merge a LoRA training run into a plain FineCaption checkpoint"),
    "score": (_score, "score captions (BLEU, METEOR, ROUGE-L, CIDEr, BERTScore) of a JSONL or lmms-eval samples log"),
    "compositioncap-demo": (_compositioncap_demo, "write a small synthetic CompositionCap folder"),
    "visual-prompts": (_visual_prompts, "write one example image per visual prompt style"),
    "synth": (_synth, "write synthetic regional-captioning scenes (CompositionCap or LLaVA)"),
    "caption": (_caption, "caption the regions of an image (one line per --mask) or of a regions file (JSONL out)"),
    "demo": (_demo, "the shipped model on a generated CompositionCap test split, through lmms-eval (make demo)"),
    "demo-init": (_demo_init, "write the untrained demo model (make demo-model's first step)"),
    "demo-export": (_demo_export, "store a trained demo model in the package (float16)"),
    "compositioncap-convert": (
        _compositioncap_convert,
        "flatten per-image nested CompositionCap records to the task's JSONL",
    ),
}


def _add(subparsers: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    handler, summary = COMMANDS[name]
    parser = subparsers.add_parser(name, help=summary, **kwargs)
    parser.set_defaults(func=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finecaption", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    _add(sub, "tasks-dir")

    info = _add(sub, "info")
    info.add_argument("preset", type=_preset, help="a preset of FineCaptionConfig.from_preset (e.g. tiny)")

    tiny = _add(sub, "create-tiny")
    tiny.add_argument("directory", help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    # Every flag goes to HfArgumentParser; "+" as prefix keeps argparse from reading "--flags" itself.
    train = _add(sub, "train", add_help=False, prefix_chars="+")
    train.add_argument("args", nargs=argparse.REMAINDER)

    convert = _add(sub, "convert")
    convert.add_argument("--from", dest="source_format", choices=["llava-hr"], required=True)
    convert.add_argument("src", help="LLaVA-HR checkpoint folder (config.json, tokenizer, weights)")
    convert.add_argument("dst", help="output folder")
    convert.add_argument("--alpha-clip", help="Alpha-CLIP checkpoint whose conv1_alpha initialises the mask branch")
    convert.add_argument(
        "--clip-heads",
        type=int,
        help="CLIP's attention heads, when the vision tower the config names does not settle them",
    )
    convert.add_argument(
        "--version", default="vicuna_v1", help="conversation template of the LLM, for the chat template"
    )

    merge = _add(sub, "merge")
    merge.add_argument("--model-path", required=True, help="the LoRA run (or one of its checkpoint-N folders)")
    merge.add_argument("--model-base", help="base checkpoint (default: the one the run was trained from)")
    merge.add_argument("--save-model-path", required=True, help="output folder")

    score = _add(
        sub,
        "score",
        description="``finecaption score FILE``: caption metrics of a JSONL of predictions, printed and saved as JSON.",
    )
    score.add_argument("file", type=Path, help="JSONL of prediction/references[/group] or lmms-eval samples")
    score.add_argument("-o", "--output", type=Path, help="JSON to write (default: FILE with .scores.json)")
    score.add_argument("--metrics", nargs="+", help="subset of BLEU METEOR ROUGE-L CIDEr BERTScore")
    score.add_argument("--group-field", default="group", help="record field giving the group (default: group)")
    score.add_argument("--bertscore-model", help="hub name in the local cache or folder (default: offline MiniLM)")
    score.add_argument("--bertscore-layer", type=int, help="layer for BERTScore (default: the model's usual one)")
    score.add_argument("--device", help="device for BERTScore (default: cuda if available)")

    demo = _add(sub, "compositioncap-demo")
    demo.add_argument("directory", help="output folder (use it as COMPOSITIONCAP_ROOT)")
    demo.add_argument("--images", type=int, default=4, help="number of images (7 records each)")
    demo.add_argument("--seed", type=int, default=0)

    flatten = _add(sub, "compositioncap-convert")
    flatten.add_argument("source", help="nested file: a JSON list or JSON lines of per-image records")
    flatten.add_argument("target", help="flat JSON lines (name it compositioncap_test.jsonl in the data folder)")

    visual = _add(sub, "visual-prompts")
    visual.add_argument("--demo", metavar="OUTDIR", required=True, help="folder for the example PNGs")

    synth = _add(sub, "synth")
    synth.add_argument("directory", help="output folder")
    synth.add_argument("--images", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, default=0, help="data set seed (same arguments, same bytes)")
    synth.add_argument(
        "--format",
        choices=["compositioncap", "llava"],
        default="compositioncap",
        help="compositioncap: compositioncap_test.jsonl (lmms-eval); llava: train.json (training)",
    )
    synth.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")

    caption = _add(
        sub,
        "caption",
        description="Caption regions with FineCaption (default: the shipped demo model). Each image is encoded "
        "once for all its masks.",
    )
    caption.add_argument("image", nargs="?", help="the image (omit with --regions)")
    caption.add_argument(
        "--mask",
        action="append",
        default=[],
        help="a region: a mask image path, a CompositionCap string, or inline JSON (COCO RLE, polygon list, "
        '{"bbox": [x0, y0, x1, y1]}); repeat for more; none: the whole image',
    )
    caption.add_argument("--prompt", help="the question asked of every region (default: the task's instruction)")
    caption.add_argument("--task", choices=["aarc", "rdc", "global"], help="ask the task's instruction (default rdc)")
    caption.add_argument("--attribute", help="the attribute for --task aarc (e.g. color, 'materials/texture')")
    caption.add_argument("--regions", help="a CompositionCap JSONL or a COCO-style annotation file")
    caption.add_argument("--image-folder", help="root of the regions file's image paths (default: its folder)")
    caption.add_argument("-o", "--output", help="JSONL to write with --regions")
    caption.add_argument("--model", help="checkpoint folder (default: the shipped demo model)")
    caption.add_argument("--json", action="store_true", help="print JSON lines {mask, prompt, caption}")
    caption.add_argument("--max-new-tokens", type=int, default=128)
    caption.add_argument("--batch-size", type=int, default=16, help="questions decoded together")
    caption.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    caption.add_argument("--device", default="cpu")

    demo_run = _add(sub, "demo")
    demo_run.add_argument("--output", default="demo-output", help="folder for the data, results and galleries")
    demo_run.add_argument("--images", type=int, default=DEMO_TEST_IMAGES, help="test images to generate")
    demo_run.add_argument("--seed", type=int, default=DEMO_TEST_SEED, help="test split seed (training used 0)")
    demo_run.add_argument("--limit", type=int, help="lmms-eval --limit: requests per task (a quick run)")
    demo_run.add_argument("--batch-size", type=int, default=16)
    demo_run.add_argument("--model", help="checkpoint folder (default: the shipped demo model)")

    init = _add(sub, "demo-init")
    init.add_argument("directory", help="output folder")
    init.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the pretraining scenes")
    init.add_argument(
        "--tower-steps",
        type=int,
        default=0,
        help="steps of tower pretraining on generated scenes (finecaption_plugin.tower_pretraining); 0: none",
    )
    init.add_argument(
        "--refine-steps",
        type=int,
        default=0,
        help="steps of the second, category-weighted pretraining stage (demo.DEMO_TOWER_REFINE_WEIGHTS); 0: none",
    )
    export = _add(sub, "demo-export")
    export.add_argument("run", help="the training run's output folder")
    export.add_argument("target", nargs="?", help="destination (default: the package's demo_model folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def visual_prompts_demo(argv: Sequence[str] | None = None) -> int:
    """``python -m finecaption_plugin.visual_prompts --demo OUTDIR``: the same as ``finecaption visual-prompts``."""
    return main(["visual-prompts", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
