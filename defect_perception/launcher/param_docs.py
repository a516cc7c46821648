"""Parameter tables for docs/parameters.md, generated from the nodes' own ParamSpec tables so
the document cannot drift from the code:

    python -m defect_perception.launcher.param_docs > docs/parameters.md
"""
from __future__ import annotations

import importlib
import sys

from defect_perception.line_spec import NODES, NodeSpec

INTRO = """# Parameters

Every node of the line declares its parameters with a type, a range or a list of allowed
values, and a description. Values are checked when the node starts and on every live change;
a bad value is refused with the reason (the node keeps the old value).

Where to set them, lowest priority first:

1. the node's default (tables below);
2. `config/line.yaml` (one section per node: `/**/camera:`, `/**/inspector:`, ...;
   plain `camera:` keys are accepted too);
3. `defect-perception line -p NODE.NAME=VALUE` (repeatable), e.g. `-p camera.fps=10`;
   the launcher checks names and types from the file and from `-p` before it starts
   anything: a misspelt name is an error naming the closest ones, and values are fitted to
   the types below (`uri: 0` is the text "0", `fps: 5` the double 5.0);
4. live, while the line runs: `defect-perception param set NODE NAME VALUE`
   (or `ros2 param set /line/NODE NAME VALUE` in a full ROS 2 install). Parameters marked
   *restart* are read-only at run time: change them in the file and restart the line.

```bash
defect-perception param list                   # the nodes of the line (namespace /line)
defect-perception param list camera            # names (add --values for values)
defect-perception param describe camera fps    # type, range, description
defect-perception param get camera fps
defect-perception param set camera fps 12      # an integer is accepted for a double
defect-perception param set inspector reject_threshold 0.7
```
Values are read like `ros2 param set`: `true`, `12`, `0.5`, `[a, b]`, text. A refused change
prints the node's reason and exits with code 1; an unknown node or parameter also exits 1
and lists what exists.

The launcher also sets some parameters for you (a `-p` given by you wins): camera
`wait_subscribers` = the number of image consumers it starts (inspector, anomaly), and for
`--demo` / `--bag` a finite replay (`source: rosbag`, `on_end: exit`, ack pacing on the last
stage's topic) with sorter `actuators_config` empty (a replay never drives the PLC). Tables below
are generated from the code:
`python -m defect_perception.launcher.param_docs > docs/parameters.md`.
"""


def node_specs(spec: NodeSpec) -> list:
    """The ParamSpec list a node declares: `NODE_CLASS.param_specs()` if it has one, else the
    module-level list of ParamSpec (SPECS / PARAMS)."""
    from defect_perception.launcher.composed import node_class
    from defect_perception.nodes.base import ParamSpec

    cls = node_class(spec.name)
    if hasattr(cls, "param_specs"):
        return list(cls.param_specs())
    module = importlib.import_module(spec.module)
    for value in vars(module).values():
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, ParamSpec) for v in value):
            return list(value)
    return []


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"' if v else '""'
    return str(v)


def _limits(s) -> str:
    if s.choices:
        return ", ".join(s.choices)
    if s.range is not None:
        lo, hi, *step = s.range
        return f"{lo} .. {hi}" + (f" (step {step[0]})" if step else "")
    return ""


def render() -> str:
    out = [INTRO]
    for spec in NODES:
        out.append(f"## {spec.name}\n\n{spec.description.capitalize()}. Module `{spec.module}`.\n")
        if not spec.available():
            out.append("_Not in this build._\n")
            continue
        out.append("| parameter | type | default | allowed | change | description |")
        out.append("|---|---|---|---|---|---|")
        for s in node_specs(spec):
            kind = s.ptype().name.lower().replace("_array", "[]")
            out.append(f"| `{s.name}` | {kind} | `{_cell(_default(s.default))}` | {_cell(_limits(s))} | "
                       f"{'restart' if s.read_only else 'live'} | {_cell(s.description)} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
