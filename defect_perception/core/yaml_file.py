"""Reading the YAML files users write (actuators, training configs, calibration, parameters):
one place that turns I/O and syntax problems into an error naming the file and its purpose."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml_mapping(path: str | Path, what: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The top-level mapping of `path` ({} for an empty file); `error` says `<what> <path>: why`."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise error(f"{what} {path}: cannot read ({e.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{what} {path}: not valid YAML ({e})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise error(f"{what} {path}: expected a mapping at the top, got {type(doc).__name__}")
    return doc
