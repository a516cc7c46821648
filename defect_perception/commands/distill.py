"""`defect-perception distill`: train a student classifier, alone or distilled from a teacher.

Methods: none (student alone), hinton (soft targets, T^2-scaled), simkd (projector + reused
teacher classifier), labelfree (logit MSE + BCE on teacher outputs; labels never read).
`--hierarchy` adds per-level heads and the category-tree loss with its dependency term.

Examples:
  defect-perception distill --config config/train/deeppcb_student.yaml --method simkd \
      --teacher runs/teacher/best.pt --out runs/simkd --export models/my-student
  defect-perception distill --config config/train/deeppcb_student.yaml --method none --hierarchy --out runs/h
"""
from __future__ import annotations

import argparse
from pathlib import Path

from defect_perception.training.classification.cli_common import add_train_arguments, train_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    parser.add_argument("--method", choices=("none", "hinton", "simkd", "labelfree"),
                        help="distillation method (default from the config: none)")
    parser.add_argument("--teacher", type=Path, help="teacher checkpoint (best.pt of train-teacher)")
    parser.add_argument("--hierarchy", action="store_const", const=True, default=None,
                        help="per-level heads + category-tree loss (needs a tree)")


def run(args: argparse.Namespace) -> int:
    return train_main(args, "distill")
