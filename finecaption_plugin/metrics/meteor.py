"""METEOR 1.5 through one persistent process, with pycocoevalcap's command and input lines."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from pycocoevalcap.meteor import meteor as coco_meteor
from tqdm.auto import tqdm

from .java import find_java

logger = logging.getLogger(__name__)

_JAR_DIR = Path(coco_meteor.__file__).parent


class MeteorProcess:
    """``java -jar meteor-1.5.jar - - -stdio -l en -norm``, started once and used as a context manager.

    ``segment_stats`` streams every ``SCORE`` line at once (a writer thread feeds stdin while this
    thread reads), where pycocoevalcap waits for each answer. Scores come from the jar's ``EVAL``:
    per segment, and for a corpus from the element-wise sum of its statistics, which is how the jar
    aggregates an ``EVAL`` line.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr = None

    def __enter__(self) -> MeteorProcess:
        command = [find_java(), "-jar", "-Xmx2G", coco_meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            command, cwd=_JAR_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                process.stdin.close()
            except OSError:
                pass  # already dead: nothing left to flush
            process.kill()
            process.wait()
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def segment_stats(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[str]:
        """METEOR sufficient statistics (one string each) of tokenised hypotheses against references."""
        lines = [_score_line(hypothesis, refs) for hypothesis, refs in zip(hypotheses, references, strict=True)]
        return self._ask(lines, len(lines), "METEOR", progress=True)

    def segment_scores(self, stats: Sequence[str]) -> list[float]:
        """Per-segment METEOR of statistics from ``segment_stats``."""
        if not stats:
            return []
        answers = self._ask([_eval_line(stats)], len(stats) + 1, "METEOR EVAL")
        return [float(answer) for answer in answers[:-1]]

    def corpus_score(self, stats: Sequence[str]) -> float:
        """METEOR of a set of segments, as pycocoevalcap reports it for that set."""
        totals = [sum(column) for column in zip(*([float(v) for v in s.split()] for s in stats), strict=True)]
        return float(self._ask([_eval_line([" ".join(map(repr, totals))])], 2, "METEOR EVAL")[-1])

    def _ask(self, lines: list[str], n_answers: int, what: str, progress: bool = False) -> list[str]:
        if self._process is None:
            raise RuntimeError("MeteorProcess is used outside its `with` block")
        process = self._process
        payload = "".join(lines).encode("utf-8")
        failure: list[BaseException] = []

        def write() -> None:
            try:
                process.stdin.write(payload)
                process.stdin.flush()
            except OSError as error:  # the reader below reports the dead process
                failure.append(error)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        answers = []
        for _ in tqdm(range(n_answers), desc=what, disable=None if progress else True, leave=False):
            answer = process.stdout.readline()
            if not answer:
                raise RuntimeError(f"{what}: the METEOR process ended early: {self._stderr_tail()}")
            answers.append(answer.decode("utf-8").strip())
        writer.join()
        if failure:
            raise RuntimeError(f"{what}: writing to METEOR failed: {failure[0]}; {self._stderr_tail()}")
        return answers

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:] or "(no message)"


def _score_line(hypothesis: str, references: Sequence[str]) -> str:
    # Built exactly as pycocoevalcap's Meteor._stat builds it: only the hypothesis is cleaned.
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis)) + "\n"


def _eval_line(stats: Sequence[str]) -> str:
    return "EVAL ||| " + " ||| ".join(stats) + "\n"
