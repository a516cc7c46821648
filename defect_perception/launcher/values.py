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


def to_text(value: Any) -> str:
    """A scalar as YAML-style text (`true`, `5`, `0.5`): what a string parameter gets when the
    value was read as a number or a bool and the typed text is not at hand."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def type_of(value: Any) -> str:
    """The ROS type name of a parsed value ("double", "integer array", ...), as the parameter
    tools print it."""
    if isinstance(value, list):
        kinds = {_kind(v) for v in value}
        if kinds == {"int", "float"}:
            kinds = {"float"}
        if len(kinds) != 1 or None in kinds:
            return "list" if value else "empty list"
        return _ROS_NAME[kinds.pop()] + " array"
    return _ROS_NAME.get(_kind(value) or "", type(value).__name__)


_ROS_NAME = {"bool": "bool", "int": "integer", "float": "double", "str": "string"}


def coerce_to(value: Any, expected: str, text: str | None = None) -> Any:
    """`value` fitted to the declared ROS type `expected` ("bool", "integer", "double",
    "string", or one of those + " array"): an integer for a double becomes a float, a whole
    float for an integer an int, and a number or bool for a string its text (`text`, the
    value as typed, when given). ParamValueError says what was expected when it cannot fit."""
    article = "an" if expected[0] in "aeiou" else "a"
    if value is None:  # `uri:` with nothing after it in a YAML file
        raise ParamValueError(f"expects {article} {expected}, got no value"
                              + ('; write "" for an empty text' if expected == "string" else ""))
    shown = f"{value!r}" if isinstance(value, str) else to_text(value) if not isinstance(value, list) \
        else "[" + ", ".join(repr(v) if isinstance(v, str) else to_text(v) for v in value) + "]"
    problem = f"expects {article} {expected}, got {shown} ({type_of(value)})"
    if expected.endswith(" array"):
        if not isinstance(value, list):
            raise ParamValueError(problem + f"; write a list, e.g. [{shown}]")
        element = expected.removesuffix(" array")
        fitted = [_fit(v, element, None) for v in value]
        if any(f is _NO_FIT for f in fitted):
            raise ParamValueError(problem)
        return fitted
    fitted = _fit(value, expected, text)
    if fitted is _NO_FIT:
        raise ParamValueError(problem)
    return fitted


_NO_FIT = object()


def _fit(value: Any, expected: str, text: str | None) -> Any:
    kind = _kind(value)
    if expected == "bool":
        return value if kind == "bool" else _NO_FIT
    if expected == "integer":
        if kind == "int":
            return value
        return int(value) if kind == "float" and value.is_integer() else _NO_FIT
    if expected == "double":
        return float(value) if kind in ("int", "float") else _NO_FIT
    if expected == "string":
        if kind == "str":
            return value
        return (text if text else to_text(value)) if kind in ("bool", "int", "float") else _NO_FIT
    return value  # a type the tools do not check (byte array): as given
