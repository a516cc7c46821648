"""In-process composition: several line nodes in ONE process on one MultiThreadedExecutor.

    python -m defect_perception.launcher.composed camera inspector --ros-args \
        -r __ns:=/line --params-file resolved.yaml

Co-located nodes hand frames to each other without serialisation (nodes/frame_io.py fast
path). Names, namespace and parameters come from the ROS arguments, exactly as for one
node per process, so the same parameter file serves both modes.
"""
from __future__ import annotations

import importlib
import inspect
import sys

from defect_perception.line_spec import BY_NAME


def node_class(name: str) -> type:
    """The node class of `defect_perception.nodes.<name>`: its `NODE_CLASS` attribute, else
    the one rclpy Node subclass defined in that module."""
    from rclpy.node import Node

    spec = BY_NAME[name]
    module = importlib.import_module(spec.module)
    cls = getattr(module, "NODE_CLASS", None)
    if cls is None:
        found = [c for _, c in inspect.getmembers(module, inspect.isclass)
                 if issubclass(c, Node) and c.__module__ == module.__name__]
        if len(found) != 1:
            raise RuntimeError(f"{spec.module} defines no NODE_CLASS and {len(found)} Node classes "
                               f"({', '.join(c.__name__ for c in found) or 'none'}); set NODE_CLASS")
        cls = found[0]
    return cls


def main(argv: list[str] | None = None) -> int:
    from defect_perception.nodes.base import run_nodes

    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    names, ros_args = argv[:split], argv[split:]
    unknown = [n for n in names if n not in BY_NAME]
    if not names or unknown:
        print(f"usage: composed NODE... --ros-args ...; unknown: {unknown} (known: {', '.join(BY_NAME)})",
              file=sys.stderr)
        return 2
    try:
        classes = [node_class(n) for n in names]
    except Exception as e:  # import errors name the module
        print(f"[defect_perception] failed to start: {e}", file=sys.stderr, flush=True)
        return 1
    factories = [_factory(n, c) for n, c in zip(names, classes, strict=True)]
    return run_nodes(factories, args=["composed", *ros_args], threads=len(classes) + 1)


def _factory(name: str, cls: type):
    # a node that can die on its own (the camera's frame thread) ends the whole process with
    # code 1, so the launcher reports it instead of running a line that gets no frames
    kwargs = {"exit_on_crash": True} if "exit_on_crash" in inspect.signature(cls).parameters else {}

    def make():
        try:
            return cls(**kwargs)
        except Exception as e:  # name the node whose start failed
            raise RuntimeError(f"node {name}: {e}") from e
    return make


if __name__ == "__main__":
    sys.exit(main())
