"""`defect-perception` command: one entry point, one module per subcommand.

Each subcommand lives in `defect_perception/commands/<module>.py` with
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their
command runs, so `defect-perception line` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module under defect_perception.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "line": ("line", "start the inspection line (camera, inspector, anomaly, sorter)"),
    "param": ("param", "list/get/set node parameters (like `ros2 param`)"),
    "record": ("record", "record topics to a rosbag2 (mcap)"),
    "make-sample": ("make_sample", "build the sample recording from DeepPCB"),
    "train-teacher": ("train_classifier", "train the teacher classifier"),
    "distill": ("distill", "train a student classifier (none|hinton|simkd|labelfree)"),
    "evaluate": ("evaluate_classifier", "evaluate a classifier checkpoint or ONNX model"),
    "export": ("export", "export a trained model to ONNX + model card"),
    "build-engine": ("build_engine", "build a TensorRT engine from an ONNX model"),
    "train-anomaly": ("train_anomaly", "train the teacher-student anomaly model on good images"),
    "evaluate-anomaly": ("evaluate_anomaly", "evaluate an anomaly model"),
    "train-detector": ("train_detector", "train the defect detector"),
    "compress-detector": ("compress_detector", "sparsity-train, prune and fine-tune the detector"),
    "evaluate-detector": ("evaluate_detector", "evaluate a detector"),
    "plc-sim": ("plc_sim", "run a Modbus TCP PLC simulator"),
    "audit": ("audit", "summarise the sorter's audit log"),
    "evaluate-line": ("evaluate_line", "replay a recording through the line and report"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="defect-perception", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_mod, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == only:
            _module(name).add_arguments(p)
    return parser


def _module(name: str):
    module = COMMANDS[name][0]
    try:
        return importlib.import_module(f"defect_perception.commands.{module}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("defect_perception.commands"):
            raise SystemExit(f"defect-perception {name}: not available in this build") from None
        raise SystemExit(f"defect-perception {name}: needs the Python package '{e.name}'"
                         f" (for training commands: pip install 'defect_perception[train]')") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return int(_module(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
