"""`defect-perception compress-detector`: sparsity training, channel + layer pruning and
fine-tuning (with and without KD) of a trained detector; stages reuse what `--work` holds."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.cli_errors import ON_ERROR, ON_ERROR_HELP
    from ..training.detector.pipeline import STAGES

    parser.add_argument("--config", default="config/train/detector.yaml", help="YAML config")
    parser.add_argument("--work", default="runs/detector", help="folder of stage checkpoints (<stage>.pt)")
    parser.add_argument(
        "--stage",
        default="all",
        choices=("all",) + STAGES,
        help="stage to produce (its missing predecessors are produced first)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data", help="DeepPCB folder (default ../shared/datasets/deeppcb)")
    parser.add_argument("--on-error", choices=ON_ERROR, help=ON_ERROR_HELP)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from ..training.cli_errors import usage_error
    from ..training.detector.pipeline import STAGES, load_for_training, run_stage

    over: dict = {"train": {"threads": args.threads}}
    if args.data:
        over["data"] = {"root": args.data}
    try:  # bad config or dataset file: one line naming the file (and line), exit 2
        cfg, data = load_for_training(args.config, over, args.on_error)
    except (OSError, ValueError) as e:  # DatasetError is a ValueError
        return usage_error("compress-detector", e)
    work = Path(args.work)
    for stage in STAGES if args.stage == "all" else (args.stage,):
        print(f"{stage}: {run_stage(stage, cfg, data, work, work / 'img')}")
    return 0
