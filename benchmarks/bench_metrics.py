"""Caption metrics on 19,326 synthetic pairs (CompositionCap's test size): ours vs pycocoevalcap routes.

All metrics but BERTScore. In one process and on the same pairs, it times
  - ours: ``finecaption_plugin.metrics.caption_scores`` (one PTB tokenizer run, one METEOR process);
  - per-metric: pycocoevalcap per metric, as lmms-eval's ``coco_cap`` drives it (PTB-tokenise
    references and predictions, then one scorer), for BLEU-1..4, METEOR, ROUGE-L and CIDEr;
  - lmms-eval: lmms-eval 0.7.3's own ``coco_aggregation_result`` called once per metric (it also
    starts a METEOR JVM on every call);
  - once: pycocoevalcap at its best (tokenise once, each scorer once);
and prints each route's time over ours, wall clock and CPU (this process and its Java children: on a
shared machine the CPU ratio is the steadier one), and the largest absolute difference of the scores
(x100). Ours runs before and after the other routes; its time is the mean of the two runs. It also times
METEOR 1.5 alone (its JVM start and scoring of the tokenised pairs, the same work in every route): the
floor under ours, which no reordering of the other work can go below.
Run: ``python benchmarks/bench_metrics.py [--n 19326] [--routes per-metric lmms-eval once]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from finecaption_plugin.metrics import caption_scores
from finecaption_plugin.metrics.meteor import MeteorProcess
from finecaption_plugin.metrics.scores import tokenize_pairs

KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
COCO_NAMES = dict(zip(KEYS, ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"), strict=True))
ATTRIBUTES = ("color", "materials/texture", "shape", "clothing", "body pose", "location", "hair", "expression")
SUBJECTS = ("the man", "a woman", "the dog", "a red car", "the child", "an old building", "the tree", "a cat")
ADJECTIVES = ("bright", "dark", "striped", "wooden", "metallic", "soft", "rough", "shiny", "pale", "tall")
NOUNS = ("shirt", "jacket", "hat", "wall", "window", "fur", "wheel", "roof", "leaves", "shoes", "bench")
VERBS = ("is wearing", "has", "stands near", "is next to", "looks at", "holds", "is behind", "leans on")
EXTRAS = ("(entity_id_3)", "it's", "isn't", '"quoted"', "-", "...", ";", "colour/texture", "5'10\"", "[left]")


def synthetic_pairs(n: int, seed: int = 0) -> tuple[list[str], list[list[str]], list[str]]:
    """Predictions, one reference each and an attribute each; captions of 1-3 clauses with PTB quirks."""
    rng = random.Random(seed)

    def caption() -> str:
        clauses = []
        for _ in range(rng.randint(1, 3)):
            clause = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
            if rng.random() < 0.5:
                clause += f" with {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
            if rng.random() < 0.3:
                clause += " " + rng.choice(EXTRAS)
            clauses.append(clause[0].upper() + clause[1:] + rng.choice((".", ",", "!", "")))
        return " ".join(clauses)

    return (
        [caption() for _ in range(n)],
        [[caption()] for _ in range(n)],
        [rng.choice(ATTRIBUTES) for _ in range(n)],
    )


def ours(predictions: list[str], references: list[list[str]], groups: list[str]) -> dict:
    result = caption_scores(predictions, references, metrics=["BLEU", "METEOR", "ROUGE-L", "CIDEr"], groups=groups)
    return {key: result[key] for key in KEYS} | {"per_sample": result["per_sample"]}


def _coco_inputs(predictions: list[str], references: list[list[str]]) -> tuple[dict, dict]:
    gts = {i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": prediction}] for i, prediction in enumerate(predictions)}
    return gts, res


def _scorer(key: str) -> tuple[object, int | None]:
    if key.startswith("BLEU"):
        return Bleu(4), int(key[-1]) - 1
    return {"METEOR": Meteor, "ROUGE-L": Rouge, "CIDEr": Cider}[key](), None


def per_metric(predictions: list[str], references: list[list[str]], groups: list[str]) -> dict:
    scores = {}
    for key in KEYS:
        gts, res = _coco_inputs(predictions, references)
        tokenizer = PTBTokenizer()
        gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
        scorer, index = _scorer(key)
        score, _ = scorer.compute_score(gts, res, verbose=0) if index is not None else scorer.compute_score(gts, res)
        scores[key] = 100 * float(score[index] if index is not None else score)
        del scorer
    return scores


def lmms_eval_route(predictions: list[str], references: list[list[str]], groups: list[str]) -> dict:
    from lmms_eval.tasks.coco_cap.utils import coco_aggregation_result

    results = [
        {"answer": refs, "pred": prediction, "image_id": i, "id": i}
        for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True))
    ]
    with tempfile.TemporaryDirectory() as output:
        args = argparse.Namespace(output_path=output)
        return {key: 100 * float(coco_aggregation_result(results, COCO_NAMES[key], args)) for key in KEYS}


def once(predictions: list[str], references: list[list[str]], groups: list[str]) -> dict:
    gts, res = _coco_inputs(predictions, references)
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    scores, per_sample = {}, {}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        scores[f"BLEU-{k + 1}"], per_sample[f"BLEU-{k + 1}"] = bleu[k], bleu_each[k]
    for key in ("METEOR", "ROUGE-L", "CIDEr"):
        scorer, _ = _scorer(key)
        scores[key], per_sample[key] = scorer.compute_score(gts, res)
        del scorer
    return {key: 100 * float(scores[key]) for key in KEYS} | {
        "per_sample": {key: [100 * float(v) for v in values] for key, values in per_sample.items()}
    }


ROUTES = {"per-metric": per_metric, "lmms-eval": lmms_eval_route, "once": once}


def meteor_alone(predictions: list[str], references: list[list[str]]) -> float:
    """Wall seconds of METEOR 1.5 on its own: JVM start plus every segment, on PTB-tokenised pairs."""
    hypotheses, tokenized_refs = tokenize_pairs(predictions, references)
    start = time.perf_counter()
    with MeteorProcess() as meteor:
        meteor.segment_stats(hypotheses, tokenized_refs)
    return time.perf_counter() - start


def timed(route, pairs: tuple) -> tuple[dict, float, float]:
    """The route's scores, wall seconds and CPU seconds (this process plus its finished children)."""

    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    cpu_start, start = cpu(), time.perf_counter()
    scores = route(*pairs)
    return scores, time.perf_counter() - start, cpu() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=19326)
    parser.add_argument("--routes", nargs="+", choices=list(ROUTES), default=list(ROUTES))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "metrics.json")
    args = parser.parse_args()
    pairs = synthetic_pairs(args.n)

    mine, first_wall, first_cpu = timed(ours, pairs)
    print(f"ours: {first_wall:.1f} s ({first_cpu:.1f} s CPU)  " + "  ".join(f"{k} {mine[k]:.4f}" for k in KEYS))
    results = {}
    for name in args.routes:
        results[name] = timed(ROUTES[name], pairs)
        print(f"{name}: {results[name][1]:.1f} s ({results[name][2]:.1f} s CPU)", flush=True)
    again, second_wall, second_cpu = timed(ours, pairs)
    print(f"ours again: {second_wall:.1f} s ({second_cpu:.1f} s CPU)")
    our_wall, our_cpu = (first_wall + second_wall) / 2, (first_cpu + second_cpu) / 2
    meteor_seconds = meteor_alone(*pairs[:2])
    print(f"METEOR 1.5 alone: {meteor_seconds:.1f} s, {meteor_seconds / our_wall:.0%} of ours")
    report = {
        "n": args.n,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at the end",
        "ours": {
            "seconds": [round(first_wall, 2), round(second_wall, 2)],
            "cpu_seconds": [round(first_cpu, 2), round(second_cpu, 2)],
        },
        "ours_repeatable": all(mine[key] == again[key] for key in KEYS),
        "meteor_alone_seconds": round(meteor_seconds, 2),
        "scores": {key: mine[key] for key in KEYS},
        "routes": {},
    }
    for name, (theirs, seconds, cpu_seconds) in results.items():
        difference = max(abs(mine[key] - theirs[key]) for key in KEYS)
        entry = {
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "ratio": round(seconds / our_wall, 2),
            "cpu_ratio": round(cpu_seconds / our_cpu, 2),
            "max_abs_diff": difference,
        }
        if "per_sample" in theirs:
            entry["max_abs_diff_per_sample"] = max(
                abs(a - b)
                for key in KEYS
                for a, b in zip(mine["per_sample"][key], theirs["per_sample"][key], strict=True)
            )
        report["routes"][name] = entry
        print(
            f"{name}: {entry['ratio']:.2f}x ours (CPU {entry['cpu_ratio']:.2f}x); max |difference| {difference:.3g}"
            + (f", per sample {entry['max_abs_diff_per_sample']:.3g}" if "max_abs_diff_per_sample" in entry else "")
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
