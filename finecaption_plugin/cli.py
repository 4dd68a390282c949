"""The ``finecaption`` command: one sub-command per job, each defined beside the code it drives.

Every module listed in ``COMMAND_MODULES`` exposes ``add_command(subparsers)``, which adds its
sub-parser and sets ``func`` (called with the parsed namespace, returning an exit status).
Those modules keep their heavy imports (the model, training, metrics) inside functions, so
building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "finecaption_plugin.info",
    "finecaption_plugin.tiny",
    "finecaption_plugin.train",
    "finecaption_plugin.convert",
    "finecaption_plugin.merge",
    "finecaption_plugin.metrics.command",
    "finecaption_plugin.compositioncap",
)


def tasks_dir() -> str:
    """The folder of the shipped lmms-eval tasks, for ``lmms-eval --include_path``."""
    from importlib.resources import files

    return str(files("finecaption_plugin.tasks"))


def _print_tasks_dir(_: argparse.Namespace) -> int:
    print(tasks_dir())
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .synth import write_synth

    print(write_synth(args.directory, args.images, seed=args.seed, format=args.format, size=args.size))
    return 0


def _add_synth_command(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser("synth", help="write synthetic regional-captioning scenes (CompositionCap or LLaVA)")
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
    synth.set_defaults(func=_synth)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finecaption", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    tasks = subparsers.add_parser("tasks-dir", help="print the lmms-eval tasks folder shipped in the package")
    tasks.set_defaults(func=_print_tasks_dir)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_command(subparsers)
    _add_synth_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
