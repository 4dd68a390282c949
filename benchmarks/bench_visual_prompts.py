"""How the shipped demo model reads a region: attribute accuracy and caption metrics per visual prompt style.

On generated scenes (`finecaption synth`'s generator, a seed not used in training) every attribute question of
every entity is asked five ways, in one run of one model:

- `mask`: the mask fed to the model (FineCaption's own way);
- `bbox`, `contour`, `crop`: the region drawn on (or cut out of) the image, no mask (how baselines see it);
- `none`: the whole image and no region at all: the model can only describe some entity of the image, so its
  accuracy should sit near the chance of picking one (the proof that it reads the region).

Reported per style: attribute accuracy overall, per attribute and on the entities whose box holds another
entity's pixels (`overlap_accuracy`: where a box is ambiguous and a mask is not), the chance level, and the five
caption metrics of Table 2 over the attribute captions (x100 in the table, fractions in the JSON for accuracy);
in the JSON also, per attribute and true value, the values the predictions stated (`per_value`), and under the
table the most frequent mistakes of the `mask` style.

    python benchmarks/bench_visual_prompts.py --images 100 --seed 1234 --out benchmarks/results/visual_prompts.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

STYLES = ("mask", "bbox", "contour", "crop", "none")
METRIC_NAMES = ("ROUGE-L", "BLEU-4", "METEOR", "CIDEr", "BERTScore")


def requests_for_style(scenes, style: str):
    """Per image: (image, masks, prompts, samples) for `RegionCaptioner.caption`, one entry per AARC record."""
    from PIL import Image

    from finecaption_plugin.prompts import task_prompt
    from finecaption_plugin.synth import box_ambiguous, compositioncap_records, region_prompt
    from finecaption_plugin.visual_prompts import render_visual_prompt

    batches = []
    for scene in scenes:
        picture = Image.fromarray(scene.image)  # the pixels `finecaption synth` writes to its PNG
        images, masks, prompts, samples = [], [], [], []
        rendered = {}  # entity -> its image in a drawn style, shared by the entity's questions
        for record in compositioncap_records(scene):
            if record["task"] != "aarc":
                continue
            entity = record["entity"]
            mask = scene.entities[entity].mask
            prompt = task_prompt("aarc", record["attribute"])
            image = picture
            if style in ("bbox", "contour", "crop"):
                if entity not in rendered:
                    rendered[entity] = render_visual_prompt(picture, mask, style, prompt)[0]
                image = rendered[entity]
                prompt = region_prompt("aarc", record["attribute"], style, scene.boxes[entity], picture.size)
            images.append(image)
            masks.append(mask if style == "mask" else None)
            prompts.append(prompt)
            samples.append({**record, "references": record["captions"], "overlap": box_ambiguous(scene, entity)})
        batches.append((images, masks, prompts, samples))
    return batches


def run_style(captioner, scenes, style: str, max_new_tokens: int) -> list[dict]:
    """The samples of `style` with their predictions; images shared by several questions are encoded once."""
    samples = []
    for images, masks, prompts, style_samples in requests_for_style(scenes, style):
        # Group by image object: the rendered styles make one image per entity, mask/none one per scene.
        groups: dict[int, list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(id(image), []).append(index)
        order = list(groups.values())
        captions = captioner.caption(
            [images[group[0]] for group in order],
            [[masks[i] for i in group] for group in order],
            [[prompts[i] for i in group] for group in order],
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
        predictions = {}
        for group, group_captions in zip(order, captions, strict=True):
            predictions.update(zip(group, group_captions, strict=True))
        samples += [{**sample, "prediction": predictions[i]} for i, sample in enumerate(style_samples)]
    return samples


def summarize(samples: list[dict]) -> dict:
    from finecaption_plugin.attribute_accuracy import attribute_accuracy
    from finecaption_plugin.metrics import caption_scores

    accuracy = attribute_accuracy(samples)
    per_attribute = accuracy["per_attribute"]
    overlapping = attribute_accuracy([s for s in samples if s["overlap"]])
    scores = caption_scores([s["prediction"] for s in samples], [s["references"] for s in samples])
    return {
        "accuracy": {"overall": accuracy["overall"], **{k: v["accuracy"] for k, v in per_attribute.items()}},
        "overlap_accuracy": overlapping["overall"] if overlapping else None,
        "chance": accuracy["chance"],
        "chance_per_attribute": {k: v["chance"] for k, v in per_attribute.items()},
        "per_value": {k: v["per_value"] for k, v in per_attribute.items()},
        "metrics": {name: scores[name] for name in METRIC_NAMES},
        "samples": len(samples),
    }


def print_table(results: dict) -> None:
    styles = results["styles"]
    attributes = [k for k in next(iter(styles.values()))["accuracy"] if k != "overall"]
    header = ["style", "overall", "overlap", "chance", *attributes, *METRIC_NAMES]
    rows = [
        [style, row["accuracy"]["overall"], row["overlap_accuracy"], row["chance"],
         *(row["accuracy"][a] for a in attributes), *(row["metrics"][m] / 100 for m in METRIC_NAMES)]
        for style, row in styles.items()
    ]  # fmt: skip
    short = {"relative location with other objects": "location", "materials/texture": "texture",
             "category name": "category"}  # fmt: skip
    print("  ".join(f"{short.get(h, h):>9}" for h in header))
    for row in rows:
        print(f"{row[0]:>9}  " + "  ".join(f"{100 * v:9.1f}" if v is not None else f"{'-':>9}" for v in row[1:]))
    print("accuracy and chance in %, metrics x100 (BERTScore: the offline MiniLM, rescaled)")
    if "mask" in styles:
        from finecaption_plugin.attribute_accuracy import format_confusions

        per_attribute = {name: {"per_value": rows} for name, rows in styles["mask"]["per_value"].items()}
        print("mask: " + format_confusions(per_attribute))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234, help="scene seed (the demo model trained on seed 0)")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    parser.add_argument("--model", help="checkpoint (default: the shipped demo model)")
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from finecaption_plugin.caption import load_captioner
    from finecaption_plugin.synth import make_scene

    if args.threads:
        torch.set_num_threads(args.threads)
    captioner = load_captioner(args.model, batch_size=args.batch_size)
    scenes = [make_scene(args.seed, index) for index in range(args.images)]
    results = {
        "command": "python benchmarks/bench_visual_prompts.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "images": args.images,
        "seed": args.seed,
        "styles": {},
    }
    for style in args.styles:
        started = time.perf_counter()
        samples = run_style(captioner, scenes, style, args.max_new_tokens)
        results["styles"][style] = summarize(samples)
        results["styles"][style]["seconds"] = round(time.perf_counter() - started, 1)
        results["styles"][style]["examples"] = [
            {"id": s["id"], "prediction": s["prediction"], "reference": s["references"][0]} for s in samples[:6]
        ]
        print(f"{style}: {len(samples)} questions in {results['styles'][style]['seconds']} s", file=sys.stderr)
    print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
