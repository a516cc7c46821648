"""One-line command errors for the training commands that own their output format
(train-detector, compress-detector, train-anomaly): `defect-perception <command>: <message>`
on stderr, exit code 2 (bad input or usage, as in the rest of the CLI)."""
from __future__ import annotations

import sys

ON_ERROR = ("fail", "skip")
ON_ERROR_HELP = ("unreadable image / bad annotation line: stop naming the file and line (fail, default) "
                 "or report it and go on without that sample (skip)")


def usage_error(command: str, error: Exception | str) -> int:
    """Print the error as one line (YAML parser messages span several) and return 2."""
    msg = " ".join(str(error).split())
    print(f"defect-perception {command}: {msg}", file=sys.stderr, flush=True)
    return 2


def check_on_error(value: str, where: str = "on_error") -> str:
    if value not in ON_ERROR:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(ON_ERROR)}")
    return value
