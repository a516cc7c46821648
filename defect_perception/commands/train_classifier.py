"""`defect-perception train-teacher`: train a classifier with labels (the teacher, or any model).

Examples:
  defect-perception train-teacher --config config/train/deeppcb_teacher.yaml --out runs/teacher
  defect-perception train-teacher --data my_parts/ --data-kind folder --model efficientnet_b2 \
      --no-pretrained --steps 20000 --out runs/b2
  torchrun --nproc_per_node 2 -m defect_perception.cli train-teacher --config ... --out runs/t
"""
from __future__ import annotations

import argparse

from defect_perception.training.classification.cli_common import add_train_arguments, train_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return train_main(args, "train-teacher")
