"""`defect-perception evaluate-detector`: DeepPCB test-split metrics of a detector checkpoint
(mAP@0.5, DeepPCB precision/recall/F per class, template false-alarm rate, PR curve PNG)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="detector checkpoint (.pt with config + state_dict)")
    parser.add_argument("--config", default="config/train/detector.yaml", help="YAML config (data section)")
    parser.add_argument(
        "--threshold",
        type=float,
        help="operating score threshold (default: the best F-score on the validation split)",
    )
    parser.add_argument("--pr-png", help="write PR curves here")
    parser.add_argument("--json", help="write the metrics here")
    parser.add_argument("--data", help="DeepPCB folder (default ../shared/datasets/deeppcb)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from ..training.detector.model import load_checkpoint
    from ..training.detector.pipeline import evaluate_model, load_config, load_data

    try:
        model, _ = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"evaluate-detector: {e}")
        return 1
    cfg = load_config(
        args.config,
        {
            "model": {"img_size": model.cfg.img_size},
            "data": {"template": model.cfg.in_channels == 2, **({"root": args.data} if args.data else {})},
        },
    )
    m = evaluate_model(model.eval(), load_data(cfg), cfg["eval"]["nms_iou"], args.threshold, args.pr_png)
    print(
        f"mAP@0.5 {m['map50']:.4f}  DeepPCB P {m['precision']:.4f} R {m['recall']:.4f} F {m['f_score']:.4f}"
        f"  (threshold {m['score_threshold']:.3f})"
        f"  template false alarms {m['template_false_alarm_rate']:.3f}"
    )
    for name, d in m["deeppcb"].items():
        ap = m["ap50"].get(name)
        print(
            f"  {name:16s} AP50 {'' if ap is None else f'{ap:.4f}':6s}  P {d['precision']:.4f}"
            f"  R {d['recall']:.4f}  F {d['f_score']:.4f}  (gt {d['gt']}, det {d['det']})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=1))
    return 0
