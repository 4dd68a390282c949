"""pycocoevalcap's PTB tokenisation, run once over every caption of a call.

pycocoevalcap's ``PTBTokenizer`` starts Stanford CoreNLP 3.4.1's tokenizer (Java) once per call, and
``coco_cap`` calls it twice per metric, through a temp file written into site-packages. Here the same
jar and options run once, reading stdin, and the same punctuation list is dropped afterwards, so the
tokens are identical, quirks included: lowercasing, ``-lrb-``/``-rrb-`` kept (the list has only the
upper-case spellings), contractions split (``isn't`` -> ``is n't``), ``|||`` split into ``| | |``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from pycocoevalcap.tokenizer import ptbtokenizer

from .java import find_java

_JAR = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
_PUNCTUATION = frozenset(ptbtokenizer.PUNCTUATIONS)
# The tokenizer starts a new output line at each of these; pycocoevalcap replaces only "\n", so a
# caption holding another one shifts every later caption there. Spaces keep one caption per line.
_LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\x0b\x0c\u2028\u2029", " "))


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenise like ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer``: one string per sentence,
    lowercased PTB tokens joined by single spaces, punctuation tokens removed."""
    if not sentences:
        return []
    text = "\n".join(sentence.translate(_LINE_BREAKS) for sentence in sentences)
    command = [
        find_java(),
        "-cp",
        str(_JAR),
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
    ]
    done = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"the PTB tokenizer ({' '.join(command)}) exited with {done.returncode}: "
            f"{done.stderr.decode(errors='replace')[-2000:]}"
        )
    lines = done.stdout.decode("utf-8").split("\n")
    if len(lines) != len(sentences):
        raise RuntimeError(f"the PTB tokenizer returned {len(lines)} lines for {len(sentences)} sentences")
    return [" ".join(word for word in line.rstrip().split(" ") if word not in _PUNCTUATION) for line in lines]
