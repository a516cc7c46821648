"""`defect-perception evaluate`: score a classifier checkpoint (.pt) or model folder (ONNX)
on a split: accuracy, precision / recall / F1 per class and macro, confusion matrix (JSON +
PNG), per-level accuracy on the category tree, accuracy vs review rate, and (--latency)
ONNX Runtime CPU batch-1 latency.

Example:
  defect-perception evaluate --model models/deeppcb-student --config config/train/deeppcb_student.yaml \
      --split test --out runs/eval --latency
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from defect_perception.training.classification.cli_common import add_data_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="checkpoint .pt or model folder")
    add_data_arguments(parser)
    parser.add_argument("--split", choices=("train", "val", "calib", "test"), default="test")
    parser.add_argument("--out", type=Path, help="write metrics.json + confusion.png here")
    parser.add_argument("--latency", action="store_true", help="measure ONNX Runtime CPU latency")


def run(args: argparse.Namespace) -> int:
    from defect_perception.core.model_card import ModelCardError, load_card
    from defect_perception.training.classification import evaluate
    from defect_perception.training.classification.cli_common import load_parts, overrides
    from defect_perception.training.classification.config import ConfigError, load_config
    from defect_perception.training.deeppcb import DatasetError

    try:
        cfg = load_config(args.config, overrides(args))
        ts = load_parts(cfg, not args.no_progress)[args.split]
        if args.model.suffix == ".pt":
            from defect_perception.training.classification.models import param_count
            from defect_perception.training.classification.train import load_checkpoint, predict

            model, ck = load_checkpoint(args.model)
            probs, onnx = predict(model, ts, ck["input"]), None
            size_info = {"params": param_count(model), "macs": evaluate.flops(model, cfg.size)}
        else:
            card = load_card(args.model)
            onnx = card["_onnx"]
            if card["classes"] != ts.classes:
                raise ValueError(f"{args.model}: card classes {card['classes']} differ from the data's "
                                 f"{ts.classes}")
            probs = evaluate.onnx_probs(onnx, ts, card["input"]["mean"], card["input"]["std"])
            size_info = {"params": card.get("parameters")}
    except (ConfigError, DatasetError, ModelCardError, FileNotFoundError, ValueError) as e:
        print(f"evaluate: {e}")
        return 2
    m = evaluate.metrics(ts.labels, probs, ts.classes, ts.tree)
    m["split"] = args.split
    m.update(size_info)
    if args.latency:
        if onnx is None:
            print("evaluate: --latency needs an exported model folder (ONNX)")
            return 2
        m["latency"] = evaluate.ort_latency({"model": evaluate.ort_session(onnx)}, cfg.size)["model"]
    print(f"{args.split}: n={m['n']} accuracy {m['accuracy'] * 100:.2f}%  macro P/R/F1 "
          f"{m['macro_precision'] * 100:.1f}/{m['macro_recall'] * 100:.1f}/{m['macro_f1'] * 100:.1f}")
    print(f"  params {m['params']}" + (f", MACs {m['macs'] / 1e6:.1f} M" if "macs" in m else ""))
    for lv in m.get("per_level", []):
        print(f"  level {lv['level']} ({', '.join(lv['labels'])}): accuracy {lv['accuracy'] * 100:.2f}%")
    if "latency" in m:
        lat = m["latency"]
        print(f"  latency batch 1: median {lat['median_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        evaluate.confusion_png(m, args.out / "confusion.png")
        print(f"wrote {args.out}/metrics.json and confusion.png")
    return 0
