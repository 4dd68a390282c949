"""Tower pretraining steps on a CPU with glibc's malloc thresholds pinned (`allocator.keep_freed_memory`, what
`finecaption train` and `finecaption demo-init` do) against glibc's defaults.

A pinned process cannot go back to the defaults, so each run is a child process (`--child`), all from the same
demo-preset init (random weights) and the same scenes; the two settings alternate `--repeats` times and the table
shows each run's seconds per step, minor page faults per step and peak memory, then the ratio of the medians.

    python benchmarks/bench_cpu_training.py --steps 150 --repeats 3     # last line: JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = ("default", "pinned")


def child(init: str, steps: int, setting: str) -> dict:
    """One run in this process: `steps` pretraining steps after 10 warm-up steps."""
    import resource
    import time

    from finecaption_plugin.allocator import keep_freed_memory

    applied = keep_freed_memory() if setting == "pinned" else False
    import torch
    from transformers import AutoProcessor

    from finecaption_plugin import demo
    from finecaption_plugin.modeling_finecaption import FineCaptionForConditionalGeneration
    from finecaption_plugin.tower_pretraining import pretrain_towers

    model = FineCaptionForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(init)
    weights = demo.DEMO_TOWER_ATTRIBUTE_WEIGHTS
    pretrain_towers(model, processor, 10, seed=0, attribute_weights=weights, progress=False)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    losses = pretrain_towers(model, processor, steps, seed=0, attribute_weights=weights, progress=False)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "setting": setting,
        "pinned": applied,
        "s_per_step": seconds / steps,
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "peak_rss_mib": after.ru_maxrss / 1024,
        "last_loss": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    parser.add_argument("--child", nargs=2, metavar=("INIT", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.steps, args.child[1])))
        return
    from finecaption_plugin.demo import create_demo_init

    with tempfile.TemporaryDirectory() as folder:
        init = str(create_demo_init(Path(folder) / "init", seed=0))
        runs = []
        for repeat in range(args.repeats):
            for setting in SETTINGS:
                command = [sys.executable, __file__, "--steps", str(args.steps), "--child", init, setting]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                runs.append(json.loads(output.strip().splitlines()[-1]))
                run = runs[-1]
                print(
                    f"{repeat + 1}/{args.repeats} {setting:8s} {run['s_per_step']:.4f} s/step  "
                    f"{run['page_faults_per_step']:8.0f} page faults/step  peak {run['peak_rss_mib']:.0f} MiB  "
                    f"loss {run['last_loss']:.4f}",
                    flush=True,
                )
    median = {s: statistics.median(r["s_per_step"] for r in runs if r["setting"] == s) for s in SETTINGS}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "steps": args.steps,
        "runs": runs,
        "median_s_per_step": median,
        "speedup": median["default"] / median["pinned"],
        "same_losses": len({r["last_loss"] for r in runs}) == 1,
    }
    print(f"speedup (default / pinned, medians): {result['speedup']:.3f}x; same losses: {result['same_losses']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
