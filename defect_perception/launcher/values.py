"""Parameter values typed on a command line, read the way `ros2 param set` and `-p` read them:
YAML scalars and lists (`true`, `5`, `0.5`, `[a, b]`, `'5'` for the string "5")."""
from __future__ import annotations

from typing import Any

import yaml


class ParamValueError(ValueError):
    """A value that is not a ROS parameter value (names the text and why)."""


def parse_value(text: str) -> Any:
    """YAML-style: bool, int, float, str or a homogeneous list of those."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ParamValueError(f"value {text!r} is not valid YAML ({e.__class__.__name__})") from None
    if value is None:
        return text  # "null"/"~" are not ROS values; keep the literal string
    check_value(value, text)
    return value


def check_value(value: Any, text: str = "") -> None:
    """Raise when `value` has no ROS parameter type (dicts, mixed lists, nested lists)."""
    shown = text or repr(value)
    if isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        kinds = {_kind(v) for v in value}
        if None in kinds or len(kinds - {"int"} if "float" in kinds else kinds) > 1:
            raise ParamValueError(f"value {shown}: a list must hold one type (bool, int, float or str)")
        return
    raise ParamValueError(f"value {shown}: {type(value).__name__} is not a parameter type "
                      "(bool, int, float, str, or a list of one of these)")


def _kind(v: Any) -> str | None:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    return None


def normalise_list(value: Any) -> Any:
    """[1, 2.5] -> [1.0, 2.5]: a list mixing ints and floats is a double array."""
    if isinstance(value, list) and any(isinstance(v, float) for v in value):
        return [float(v) for v in value]
    return value
