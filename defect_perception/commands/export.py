"""`defect-perception export`: checkpoint -> `<out>/model.onnx` + `model.json` (model card).

The ONNX graph is checked against torch with ONNX Runtime before the card is written.
With --data the card carries metrics on that dataset's test split.

Example:
  defect-perception export --checkpoint runs/simkd/best.pt --out models/deeppcb-student \
      --config config/train/deeppcb_student.yaml --reject 0.5 --review-band 0.2 0.5 --fine-min 0.5
"""
from __future__ import annotations

import argparse
from pathlib import Path

from defect_perception.training.classification.cli_common import add_data_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt / last.pt of a run")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--name", help="model name in the card (default: folder name)")
    add_data_arguments(parser)
    parser.add_argument("--reject", type=float, default=0.5, help="p(defect) reject threshold")
    parser.add_argument("--review-band", type=float, nargs=2, default=(0.2, 0.5), metavar=("LO", "HI"))
    parser.add_argument("--fine-min", type=float, default=0.5, help="min fine-class confidence")


def run(args: argparse.Namespace) -> int:
    from defect_perception.training.classification.cli_common import export_main, load_parts, overrides
    from defect_perception.training.classification.config import ConfigError, load_config
    from defect_perception.training.deeppcb import DatasetError

    thresholds = {"reject": args.reject, "review_band": list(args.review_band), "fine_min": args.fine_min}
    test = None
    try:
        if args.config or args.data:
            test = load_parts(load_config(args.config, overrides(args)), not args.no_progress)["test"]
        return export_main(args.checkpoint, args.out, args.name, test, thresholds)
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as e:
        print(f"export: {e}")
        return 2
