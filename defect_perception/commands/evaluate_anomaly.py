"""`defect-perception evaluate-anomaly`: metrics of an exported anomaly model on DeepPCB.

Good parts = the split's templates, defective parts = its tested images (pixel ground truth
from the boxes). Reports image AUROC, pixel AUROC, AUPRO (FPR <= 30 %), mIoU of the map at
the calibrated threshold, false-reject rate on good parts and escape rate on defective parts;
writes metrics.json and PNG plots (ROC, score histograms, heatmap overlays).

Example:
  defect-perception evaluate-anomaly --model models/deeppcb-anomaly --deeppcb ../shared/datasets/deeppcb \
      --out docs/img/anomaly --update-card
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model directory (model.json + model.onnx)")
    parser.add_argument("--deeppcb", type=Path, required=True, help="DeepPCB root")
    parser.add_argument("--split", default="test", choices=("test", "trainval"), help="split (default test)")
    parser.add_argument("--out", type=Path, help="write metrics.json and PNG plots here")
    parser.add_argument("--update-card", action="store_true", help="store the metrics in the model card")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default)")
    parser.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency measurement")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from defect_perception import load_model
    from defect_perception.core.model_card import ModelCardError, write_card
    from defect_perception.training.anomaly.data import deeppcb_eval_items
    from defect_perception.training.anomaly.evaluate import compute_metrics, latency_ms, plots, run_model
    from defect_perception.training.deeppcb import DatasetError, load_gray

    try:
        model = load_model(args.model, backend="onnxruntime", threads=args.threads, source="anomaly")
        items = deeppcb_eval_items(args.deeppcb, args.split)
    except (ModelCardError, DatasetError) as e:
        print(f"evaluate-anomaly: {e}")
        return 2
    if model.task != "anomaly":
        print(f"evaluate-anomaly: {args.model} is a {model.task} model, not anomaly")
        return 2
    maps, scores = run_model(model, items, progress=not args.no_progress)
    m = compute_metrics(maps, scores, items, model.card)
    m["split"] = (f"DeepPCB {args.split}: {m['good_images']} templates (good) + {m['defective_images']} "
                  f"tested images (defective); pixel GT = annotated boxes; metrics at {maps.shape[-1]} px")
    if not args.no_latency:
        m["latency_ms_batch1"] = latency_ms(model, load_gray(items[1].path))
        m["latency_ms_batch1"]["backend"] = model.backend_name
        m["latency_ms_batch1"]["threads"] = args.threads
    for k in ("image_auroc", "pixel_auroc", "aupro_30", "miou_at_threshold", "false_reject_rate",
              "escape_rate", "review_rate_good", "review_rate_defective"):
        print(f"{k:24s} {m[k]:.4f}")
    if "latency_ms_batch1" in m:
        print(f"{'latency batch 1 (ms)':24s} p50 {m['latency_ms_batch1']['p50']:.1f} "
              f"p95 {m['latency_ms_batch1']['p95']:.1f} ({model.backend_name})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        for p in plots(args.out, maps, scores, items, model.card):
            print(f"wrote {p}")
    if args.update_card:
        card = dict(model.card)
        card["metrics"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
        write_card(args.model, card)
        print(f"metrics stored in {args.model}/model.json")
    model.close()
    return 0
