"""Caption metrics of a JSONL of predictions, printed and saved as JSON (``finecaption score FILE``).

Each line is either ``{"prediction": str, "references": [str, ...], "group"?: label}`` or a record of
an lmms-eval samples log (``*_samples_<task>.jsonl``), whose prediction is ``filtered_resps`` and
whose references are ``target`` (lmms-eval stores ``str(target)``, so a list of references arrives
as its Python repr and is read back with ``ast.literal_eval``). The group is the ``--group-field``
value of the record, looked up at the top level and then inside the per-metric dicts that lmms-eval
merges into each record.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


class ScoreFileError(ValueError):
    """A line of the input file that cannot be read as a scored sample."""


def score_file(
    path: Path,
    output: Path | None = None,
    metrics: Sequence[str] | None = None,
    group_field: str = "group",
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
    device: str | None = None,
) -> int:
    """Score the samples of ``path``, print the table, write the JSON (default: ``FILE.scores.json``).

    The output is opened (and a little written to it) before any scoring, so a read-only folder or a full
    disk is found first; the table is printed before the JSON is written, so a failed write loses nothing
    on screen, and leaves no partial file.

    Returns the exit status: 0; 2 after printing an input error (naming the file and line, or the output) to
    stderr; 1 when the JSON could not be written after scoring (the table is printed).
    """
    from .java import JavaNotFoundError
    from .scores import CaptionInputError, caption_scores, resolve_metric_names

    path = Path(path)
    output = Path(output) if output else path.with_name(path.name.removesuffix(".jsonl") + ".scores.json")
    try:
        chosen = resolve_metric_names(metrics)
    except ValueError as error:
        print(f"finecaption score: {error}", file=sys.stderr)
        return 2
    if "BERTScore" not in chosen and (bertscore_model is not None or bertscore_layer is not None):
        flags = " and ".join(
            flag for flag, value in (("--bertscore-model", bertscore_model), ("--bertscore-layer", bertscore_layer))
            if value is not None
        )  # fmt: skip
        print(f"finecaption score: {flags} given, but BERTScore is not among --metrics", file=sys.stderr)
        return 2
    try:
        target = OutputFile(output)
    except OSError as error:
        print(f"finecaption score: cannot write {output}: {error.strerror or error}", file=sys.stderr)
        return 2
    with target:
        try:
            line_numbers, predictions, references, groups = read_samples(path, group_field)
            result = caption_scores(
                predictions,
                references,
                metrics=metrics,
                groups=groups,
                bertscore_model=bertscore_model,
                bertscore_layer=bertscore_layer,
                device=device,
            )
        except CaptionInputError as error:
            where = f" line {line_numbers[error.record]}," if error.record is not None else ""
            print(f"finecaption score: {path}:{where} {error}", file=sys.stderr)
            return 2
        except (OSError, ValueError, JavaNotFoundError) as error:
            print(f"finecaption score: {path}: {error}", file=sys.stderr)
            return 2
        print(format_table(result), flush=True)
        try:
            target.write(result)
        except OSError as error:
            print(f"finecaption score: cannot write {output}: {error.strerror or error}", file=sys.stderr)
            return 1
    print(f"wrote {output}")
    return 0


class OutputFile:
    """The JSON output, written atomically: a temporary file beside it, opened (and ``PROBE_BYTES`` written and
    synced, so a full disk shows) when made, renamed over ``output`` by ``write``; removed unless written."""

    PROBE_BYTES = 64 * 1024

    def __init__(self, output: Path) -> None:
        self.output = output
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, self.partial = tempfile.mkstemp(dir=output.parent, prefix=output.name, suffix=".partial")
        self.file = os.fdopen(handle, "w+", encoding="utf-8")
        self.done = False
        try:
            self.file.write(" " * self.PROBE_BYTES)
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.seek(0)
            self.file.truncate()
        except OSError:
            self.close()
            raise

    def write(self, result: dict) -> None:
        json.dump(result, self.file, indent=1, ensure_ascii=False)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.partial, self.output)
        self.done = True

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        if not self.done:
            Path(self.partial).unlink(missing_ok=True)

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def run(args) -> int:
    """``score_file`` with the flags of ``finecaption score`` (a parsed namespace); kept for old callers."""
    return score_file(
        args.file,
        output=args.output,
        metrics=args.metrics,
        group_field=args.group_field,
        bertscore_model=args.bertscore_model,
        bertscore_layer=args.bertscore_layer,
        device=args.device,
    )


def read_samples(
    path: Path, group_field: str = "group"
) -> tuple[list[int], list[str], list[list[str]], list[str] | None]:
    """Line numbers, predictions, references and groups (None when no record has one) of a JSONL."""
    from ..records import CompositionCapError, read_records

    line_numbers, predictions, references, groups = [], [], [], []
    try:
        numbered = read_records(path)
    except CompositionCapError as error:
        raise ScoreFileError(str(error)) from None
    for line_number, record in numbered:
        if "prediction" in record:
            prediction, refs = record["prediction"], record.get("references")
            if isinstance(refs, str):
                refs = [refs]
        elif "filtered_resps" in record:
            prediction, refs = _first_text(record["filtered_resps"]), _lmms_eval_references(record.get("target"))
        else:
            raise ScoreFileError(
                f"line {line_number}: neither 'prediction' nor lmms-eval's 'filtered_resps' is present"
            )
        line_numbers.append(line_number)
        predictions.append(prediction)
        references.append(refs)
        groups.append(_group(record, group_field))
    if not predictions:
        raise ScoreFileError("no records")
    if all(group is None for group in groups):
        return line_numbers, predictions, references, None
    return line_numbers, predictions, references, ["(none)" if g is None else str(g) for g in groups]


def write_json(result: dict, output: Path) -> None:
    """Write atomically, so an interrupted run never leaves a truncated file (nor a partial one)."""
    with OutputFile(output) as target:
        target.write(result)


def format_table(result: dict) -> str:
    """One row for all samples and one per group; the scores present in ``result``, x100."""
    from .scores import SCORE_KEYS

    keys = [key for key in SCORE_KEYS if key in result]
    rows = [("all", result)] + list(result.get("groups", {}).items())
    width = max(len(label) for label, _ in rows)
    lines = [f"{'group':<{width}} {'n':>6} " + " ".join(f"{key:>9}" for key in keys)]
    for label, scores in rows:
        lines.append(f"{label:<{width}} {scores['n']:>6} " + " ".join(f"{scores[key]:>9.2f}" for key in keys))
    if "bertscore" in result:
        setting = result["bertscore"]
        verdict = "the paper's setting" if setting["comparable_to_paper"] else "NOT comparable with the paper"
        lines.append(
            f"BERTScore: {setting['model']}, layer {setting['layer']}, rescaled={setting['rescaled']} ({verdict})"
        )
    return "\n".join(lines)


def _first_text(response: object) -> object:
    # lmms-eval flattens one response to a string, but keeps lists for several requests or filters.
    while isinstance(response, list):
        response = response[0] if response else ""
    return response


def _lmms_eval_references(target: object) -> object:
    if isinstance(target, str) and target.startswith("["):
        try:
            parsed = ast.literal_eval(target)
        except (ValueError, SyntaxError):
            return [target]
        if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
            return parsed
    return [target] if isinstance(target, str) else target


def _group(record: dict, field: str) -> object:
    if field in record:
        return record[field]
    for value in record.values():
        if isinstance(value, dict) and field in value:
            return value[field]
    return None
