"""Region captioning with shared work against the plain path, on a CompositionCap-shaped workload.

Each image has 7 masks and 2 or 3 questions per mask (CompositionCap's test set: 7.2 masks and 2.7 questions per
mask), AARC-length questions (~20 tokens) and answers of exactly `--new-tokens` tokens (`min_new_tokens =
max_new_tokens`, so both paths do the same decoding). Both paths run in one process on the same random model and
the same requests, in batches of one image's requests (the plain path pads them to one length, as
`lmms-eval --batch_size 19` would): the plain path runs the whole model per request, the shared path
(`RegionCaptioner`) runs the slow path once per image, the fast path and the prompt prefix once per mask, and
decodes from copies of the prefix's KV cache. The paths alternate `--repeats` times; the table shows the fastest
run of each, and every run's outputs are compared token by token.

The work is counted analytically in FLOPs (multiply-adds x 2) of the vision towers, the prefill and the decoding,
for the plain path and the shared one; `bound` = plain work / shared work, the speedup that sharing allows. On the
CPU the model is small (`cpu_config`), sized so that its vision : prefill : decode proportions stay close to the
8B preset's on this workload (printed side by side); on `--device cuda` it is the full `finecaption-8b` shape
(random weights, bf16), reporting regions per second.

    python benchmarks/bench_regions.py --images 2 --seed 0            # CPU; last line: JSON
    python benchmarks/bench_regions.py --images 8 --device cuda       # finecaption-8b on a GPU
    python benchmarks/bench_regions.py --device cuda --dry-run        # no GPU: build on the meta device, FLOPs only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MASKS_PER_IMAGE = 7
ATTRIBUTES = ("color", "material", "shape", "texture", "position", "category", "size", "pose", "pattern")
QUESTION = "What is the {} of the masked object? Answer in one sentence."


def cpu_config():
    """The CPU-sized model: 1024 px images and 1024 image tokens as the 8B preset, narrow towers and a narrow LLaMA.

    Why these sizes: on this workload the 8B preset spends 11.5 % of the plain path's FLOPs on vision, 87 % on the
    ~1,190-token prefill and 1.5 % on the 20 decoded tokens. Keeping 1024 px and 1024 image tokens keeps the prompt,
    prefix and suffix lengths, hence the prefill : decode split (both scale with the LLM's width); the towers are then
    narrowed until vision is again ~12 % of the work, the slow path a little more than the fast one (8B: 1.44 and 0.80
    TFLOP): CLIP 4 x 32 on 1024 tokens, ConvNeXt 12-24-48-96 with depths 1-1-3-1 at 1024 px, a LLaMA of 3 x 384
    (6 heads, 2 KV heads, MLP 1024). Result: 13.9 : 84.4 : 1.7 % against the preset's 11.5 : 87.0 : 1.5 %, bound 2.93x
    against 2.95x on the same token counts. CLIP's attention over 1024 tokens and the projector's 384 x 384 weigh
    more at these widths than at 8B's (counted); the tiny tokenizer's 384-token vocabulary makes `lm_head` cheap
    (at 8B under 1 % of the work).
    """
    from finecaption_plugin import FineCaptionConfig

    return FineCaptionConfig.from_preset(
        "tiny",
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2),
        text_config=dict(
            hidden_size=384, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
            max_position_embeddings=2048,
        ),  # fmt: skip
        slow_depths=[1, 1, 3, 1],
        slow_dims=[12, 24, 48, 96],
        image_size=1024,
        fast_min_image_size=336,
    )


# -- analytic FLOPs ----------------------------------------------------------------------------------------------


def vision_flops(config) -> tuple[float, float]:
    """FLOPs of one image through the slow path (ConvNeXt stem and stages) and the rest (mask convolution, CLIP,
    MR-Adapters, fusion, projector)."""
    if config.use_sam_tower:
        raise ValueError("the SAM tower is not counted here")
    macs_slow = 0.0
    side = config.image_size // 4
    dims = config.slow_dims
    macs_slow += side * side * dims[0] * 3 * 16  # stem: 4x4 stride 4
    for stage, (depth, dim) in enumerate(zip(config.slow_depths, dims, strict=True)):
        if stage:
            side //= 2
            macs_slow += side * side * dim * dims[stage - 1] * 4  # downsample: 2x2 stride 2
        macs_slow += depth * side * side * (49 * dim + 8 * dim * dim)  # depthwise 7x7, MLP x4
    clip = config.vision_config
    tokens, width, patch = config.num_image_tokens, clip.hidden_size, clip.patch_size
    grid = config.fast_grid_size
    macs_fast = tokens * width * patch * patch * 4  # patch embedding (3 channels) and mask embedding (1)
    macs_fast += clip.num_hidden_layers * (tokens * (4 * width * width + 2 * width * clip.intermediate_size))
    macs_fast += clip.num_hidden_layers * 2 * tokens * tokens * width  # scores and values
    slow_cells, slow_channels = config.grid_size**2, config.slow_channels
    adapter = slow_cells * slow_channels * (slow_channels + width) + tokens * width * (49 + width)
    macs_fast += 3 * adapter
    macs_fast += tokens * width * (width + slow_channels)  # fusion
    text = config.text_config.hidden_size
    macs_fast += tokens * (width * text + text * text)  # projector
    del grid
    return 2 * macs_slow, 2 * macs_fast


def llm_flops(config, new: int, cached: int = 0, logits: int = 1) -> float:
    """FLOPs of `new` tokens through the LLaMA after `cached` ones, `logits` of them through `lm_head`."""
    text = config.text_config
    width, layers = text.hidden_size, text.num_hidden_layers
    head_dim = width // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim
    per_token = layers * (2 * width * width + 2 * width * kv + 3 * width * text.intermediate_size)
    contexts = new * cached + new * (new + 1) / 2  # causal: token i attends to cached + i tokens
    attention = layers * 2 * width * contexts
    return 2 * (new * per_token + attention + logits * width * text.vocab_size)


@dataclass
class Workload:
    """Token counts of the requests, grouped per image and mask."""

    prompt: list[list[list[int]]]  # [image][mask] -> prompt length of each question
    prefix: list[list[int]]  # [image][mask] -> shared prefix length
    new_tokens: int


def work(config, workload: Workload) -> dict[str, dict[str, float]]:
    """FLOPs by part (vision, prefill, decode) of the plain and the shared path."""
    slow, fast = vision_flops(config)
    answer = workload.new_tokens
    plain = dict.fromkeys(("vision", "prefill", "decode"), 0.0)
    shared = dict(plain)

    def decode(prompt_length: int) -> float:
        return sum(llm_flops(config, 1, prompt_length + step) for step in range(answer - 1))

    for image_prompts, image_prefixes in zip(workload.prompt, workload.prefix, strict=True):
        shared["vision"] += slow * (len(image_prompts) if config.slow_mask_embedding else 1)
        for prompts, prefix in zip(image_prompts, image_prefixes, strict=True):
            shared["vision"] += fast
            shared["prefill"] += llm_flops(config, prefix, logits=0)
            for length in prompts:
                plain["vision"] += slow + fast
                plain["prefill"] += llm_flops(config, length)
                shared["prefill"] += llm_flops(config, length - prefix, cached=prefix)
                plain["decode"] += decode(length)
                shared["decode"] += decode(length)
    return {"plain": plain, "shared": shared}


def proportions(parts: dict[str, float]) -> str:
    total = sum(parts.values())
    return " : ".join(f"{100 * value / total:.1f}%" for value in parts.values())


# -- workload and model ------------------------------------------------------------------------------------------


def make_workload(images: int, seed: int):
    """Random images (640x480), 7 box and blob masks each, 2-3 AARC-style questions per mask (70 % of masks get 3)."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(images):
        height, width = 480, 640
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        masks, questions = [], []
        for _ in range(MASKS_PER_IMAGE):
            mask = np.zeros((height, width), bool)
            y0, x0 = rng.integers(0, height - 120), rng.integers(0, width - 160)
            mask[y0 : y0 + rng.integers(40, 120), x0 : x0 + rng.integers(40, 160)] = True
            masks.append(mask)
            count = 3 if rng.random() < 0.7 else 2
            questions.append([QUESTION.format(a) for a in rng.choice(ATTRIBUTES, count, replace=False)])
        scenes.append((image, masks, questions))
    return scenes


def build(device: str, seed: int, meta: bool = False):
    """Random model and processor: `cpu_config()` in float32, or `finecaption-8b` in bfloat16 on `device`."""
    from finecaption_plugin import FineCaptionConfig, FineCaptionForConditionalGeneration
    from finecaption_plugin.tiny import build_tiny_tokenizer, processor_for

    tokenizer = build_tiny_tokenizer(384)
    special = dict(image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id)
    if device == "cpu":
        config, dtype = cpu_config(), torch.float32
    else:
        config, dtype = FineCaptionConfig.from_preset("finecaption-8b", **special), torch.bfloat16
    processor = processor_for(config, tokenizer)
    torch.manual_seed(seed)
    with torch.device("meta" if meta else device):
        model = FineCaptionForConditionalGeneration(config)
    if meta:
        return model, processor
    model = model.to(dtype).eval()
    open_mask_branch(model, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def open_mask_branch(model, seed: int) -> None:
    """Random mask convolution and adapter projections (zero at init), so the masks and the slow path matter."""
    generator = torch.Generator().manual_seed(seed)
    tower = model.model.vision_tower
    weights = [tower.fast_mask_embed.weight]
    weights += [w for adapter in tower.adapters for w in (adapter.slow_proj.weight, adapter.fast_proj.weight)]
    with torch.no_grad():
        for weight in weights:
            weight.copy_((torch.randn(weight.shape, generator=generator) * 0.02).to(weight.dtype))


# -- run ---------------------------------------------------------------------------------------------------------


def requests_per_image(captioner, scenes):
    from finecaption_plugin.region_captioning import RegionRequest

    return [
        [
            RegionRequest(captioner.prompt(question), image, mask)
            for mask, mask_questions in zip(masks, questions, strict=True)
            for question in mask_questions
        ]
        for image, masks, questions in scenes
    ]


def run_path(captioner, batches, settings, sync) -> tuple[float, list[list[int]]]:
    sync()
    start = time.perf_counter()
    tokens = [row for batch in batches for row in captioner.generate(batch, **settings).tokens]
    sync()
    return time.perf_counter() - start, tokens


def preprocessing_seconds(processor, batches) -> dict[str, float]:
    """Image and mask preprocessing alone (PIL resizes to the model's side): the plain path's processor calls, and the
    shared path's one call per image and per mask."""
    image_processor = processor.image_processor
    start = time.perf_counter()
    for batch in batches:
        processor(text=[r.text for r in batch], images=[r.image for r in batch], masks=[r.mask for r in batch])
    plain = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        image_processor.preprocess_image(batch[0].image)
        for mask in {id(r.mask): r.mask for r in batch}.values():
            image_processor.preprocess_mask(mask, batch[0].image)
    return {"plain": plain, "shared": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="images (7 masks, 2-3 questions each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens decoded per answer")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path, alternating")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: see benchmarks/README.md; 0: torch's default)"
    )
    parser.add_argument("--dry-run", action="store_true", help="build on the meta device and count FLOPs only")
    parser.add_argument("--output", type=Path, help="also write the JSON summary here")
    args = parser.parse_args(argv)

    from finecaption_plugin import FineCaptionConfig
    from finecaption_plugin.region_captioning import RegionCaptioner

    if args.device == "cuda" and not args.dry_run and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU (use --dry-run to check the model and the FLOPs without one)")
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor = build(args.device, args.seed, meta=args.dry_run)
    config = model.config
    scenes = make_workload(args.images, args.seed)
    shared = RegionCaptioner(model, processor, share=True)
    plain = RegionCaptioner(model, processor, share=False)
    batches = requests_per_image(shared, scenes)

    # Token counts: each request's prompt, and each mask's common prefix (what the shared path caches).
    from finecaption_plugin.region_captioning import _common_prefix

    lengths, prefixes, position = [], [], 0
    flat_tokens = shared._tokenize([r.text for batch in batches for r in batch])
    for _, _, questions in scenes:
        image_lengths, image_prefixes = [], []
        for mask_questions in questions:
            ids = flat_tokens[position : position + len(mask_questions)]
            position += len(mask_questions)
            image_lengths.append([len(x) for x in ids])
            image_prefixes.append(len(_common_prefix(ids)))
        lengths.append(image_lengths)
        prefixes.append(image_prefixes)
    workload = Workload(lengths, prefixes, args.new_tokens)
    flops = work(config, workload)
    reference = work(FineCaptionConfig.from_preset("finecaption-8b"), workload)
    bound = sum(flops["plain"].values()) / sum(flops["shared"].values())
    reference_bound = sum(reference["plain"].values()) / sum(reference["shared"].values())
    requests = sum(len(batch) for batch in batches)
    masks = args.images * MASKS_PER_IMAGE
    prompt = [length for image in lengths for mask in image for length in mask]
    prefix = [length for image in prefixes for length in image]
    print(f"workload: {args.images} images, {masks} masks, {requests} questions; prompts {min(prompt)}-{max(prompt)} "
          f"tokens ({config.num_image_tokens} image tokens), shared prefixes {min(prefix)}-{max(prefix)}, answers "
          f"{args.new_tokens} tokens")  # fmt: skip
    print("plain path's vision : prefill : decode FLOPs")
    print(f"  finecaption-8b preset  {proportions(reference['plain'])}   bound {reference_bound:.2f}x")
    print(f"  this model ({args.device})     {proportions(flops['plain'])}   bound {bound:.2f}x")
    if args.dry_run:
        parameters = sum(p.numel() for p in model.parameters())
        print(f"dry run: {type(model).__name__} with {parameters / 1e9:.2f} B parameters built on the meta device")
        print(json.dumps({"dry_run": True, "bound": round(bound, 3), "parameters": parameters}))
        return 0

    settings = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    # Warm-up on one mask's questions, both paths (first-call allocations, kernels).
    warm = [batches[0][:2]]
    run_path(shared, warm, settings, sync)
    run_path(plain, warm, settings, sync)
    times = {"plain": [], "shared": []}
    identical = True
    for _ in range(args.repeats):
        plain_time, plain_tokens = run_path(plain, batches, settings, sync)
        shared_time, shared_tokens = run_path(shared, batches, settings, sync)
        times["plain"].append(plain_time)
        times["shared"].append(shared_time)
        identical &= plain_tokens == shared_tokens
        assert all(len(tokens) == args.new_tokens for tokens in shared_tokens)
    best = {path: min(values) for path, values in times.items()}
    speedup = best["plain"] / best["shared"]
    # The plain path also preprocesses each request's image and mask (the shared one each image and mask once):
    # real work saved, but outside the FLOPs of the bound; the model's own speedup leaves it out.
    preprocessing = preprocessing_seconds(processor, batches)
    model_speedup = (best["plain"] - preprocessing["plain"]) / (best["shared"] - preprocessing["shared"])

    print(f"\n| path | seconds (best of {args.repeats}) | runs | regions/s | questions/s | TFLOP | "
          "vision : prefill : decode |")
    print("|---|---|---|---|---|---|---|")
    for path in ("plain", "shared"):
        parts = flops[path]
        print(f"| {path} | {best[path]:.2f} | {', '.join(f'{t:.2f}' for t in times[path])} | "
              f"{masks / best[path]:.2f} | {requests / best[path]:.2f} | {sum(parts.values()) / 1e12:.3f} | "
              f"{proportions(parts)} |")  # fmt: skip
    print(f"\nspeedup {speedup:.2f}x of a {bound:.2f}x bound ({speedup / bound:.0%}); without image and mask "
          f"preprocessing ({preprocessing['plain']:.2f} s plain, {preprocessing['shared']:.2f} s shared) "
          f"{model_speedup:.2f}x ({model_speedup / bound:.0%}); outputs identical: {identical}")  # fmt: skip
    summary = {
        "command": "python " + " ".join(["benchmarks/bench_regions.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "images": args.images,
        "masks": masks,
        "questions": requests,
        "new_tokens": args.new_tokens,
        "plain_seconds": round(best["plain"], 3),
        "shared_seconds": round(best["shared"], 3),
        "plain_regions_per_second": round(masks / best["plain"], 3),
        "shared_regions_per_second": round(masks / best["shared"], 3),
        "plain_tflop": round(sum(flops["plain"].values()) / 1e12, 4),
        "shared_tflop": round(sum(flops["shared"].values()) / 1e12, 4),
        "proportions_plain": {k: round(v / sum(flops["plain"].values()), 4) for k, v in flops["plain"].items()},
        "proportions_plain_8b": {
            k: round(v / sum(reference["plain"].values()), 4) for k, v in reference["plain"].items()
        },
        "bound_8b": round(reference_bound, 3),
        "speedup": round(speedup, 3),
        "bound": round(bound, 3),
        "fraction_of_bound": round(speedup / bound, 3),
        "preprocessing_seconds": {path: round(value, 3) for path, value in preprocessing.items()},
        "speedup_without_preprocessing": round(model_speedup, 3),
        "threads": torch.get_num_threads(),
        "identical": identical,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
