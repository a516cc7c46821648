"""`defect-perception train-detector`: train the baseline YOLO-style detector on DeepPCB."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.cli_errors import ON_ERROR, ON_ERROR_HELP

    parser.add_argument(
        "--config", default="config/train/detector.yaml", help="YAML config (see docs/detector.md)"
    )
    parser.add_argument("--out", default="runs/detector/baseline.pt", help="checkpoint (config + state_dict)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data", help="DeepPCB folder (default ../shared/datasets/deeppcb)")
    parser.add_argument("--template", action="store_true",
                        help="second input channel with the aligned defect-free template (data.template)")
    parser.add_argument("--limit", type=int, default=0, help="use only N training boards (smoke runs)")
    parser.add_argument("--on-error", choices=ON_ERROR, help=ON_ERROR_HELP)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from ..training.cli_errors import usage_error
    from ..training.deeppcb import DEFECT_TYPES
    from ..training.detector.model import build
    from ..training.detector.pipeline import load_for_training, model_config
    from ..training.detector.train import TrainConfig, train

    over: dict = {"train": {"threads": args.threads}}
    if args.epochs:
        over["train"]["epochs"] = args.epochs
    if args.data or args.limit:
        over["data"] = {k: v for k, v in (("root", args.data), ("limit", args.limit)) if v}
    if args.template:
        over.setdefault("data", {})["template"] = True
    try:  # bad config or dataset file: one line naming the file (and line), exit 2
        cfg, data = load_for_training(args.config, over, args.on_error)
    except (OSError, ValueError) as e:  # DatasetError is a ValueError
        return usage_error("train-detector", e)
    model = build(model_config(cfg, data.train))

    _, hist = train(
        model,
        data.train,
        TrainConfig.from_dict(cfg["train"]),
        args.out,
        val_ds=data.val,
        class_names=DEFECT_TYPES,
        log=logging.info,
        meta={"stage": "baseline", "config": cfg},
    )
    Path(args.out).with_suffix(".history.json").write_text(json.dumps(hist, indent=1))
    print(f"saved {args.out}")
    return 0
