"""`defect-perception train-anomaly`: teacher-student anomaly model from good images only.

Good images come from a folder (`--images`, every image in it is a good part) or from the
DeepPCB templates (`--deeppcb`). A hash split holds out `calib_fraction` of them for the
threshold; the model is exported to `<model-dir>/model.onnx` + `model.json`.

Examples:
  defect-perception train-anomaly --deeppcb ../shared/datasets/deeppcb --model-dir models/deeppcb-anomaly
  defect-perception train-anomaly --images my_good_parts/ --config config/train/anomaly.yaml \
      --target-frr 0.005 --model-dir models/my-anomaly
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from defect_perception.training.cli_errors import ON_ERROR, ON_ERROR_HELP

    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of good images (recursive)")
    src.add_argument("--deeppcb", type=Path, help="DeepPCB root: train on its trainval templates")
    parser.add_argument("--config", type=Path, help="YAML config (see config/train/anomaly.yaml)")
    parser.add_argument("--model-dir", type=Path, help="write model.onnx + model.json here")
    parser.add_argument("--name", help="model name in the card (default: model-dir name)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/anomaly"),
                        help="checkpoint and training log (default: runs/anomaly)")
    parser.add_argument("--steps", type=int, help="stage-2 student steps")
    parser.add_argument("--size", type=int, help="input side in pixels (multiple of 16)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--target-frr", type=float, help="false-reject rate on held-out good images")
    parser.add_argument("--border", type=int, help="ignore this many px at the image edge in the map")
    parser.add_argument("--score", choices=("max", "topk"), help="image score from the map")
    parser.add_argument("--topk-fraction", type=float, help="with --score topk: fraction of map pixels")
    parser.add_argument("--from-checkpoint", type=Path,
                        help="skip training: re-score/re-calibrate this checkpoint (scoring options only)")
    parser.add_argument("--tune-scoring", action="store_true",
                        help="DeepPCB only: choose border / score reduction by image AUROC on the "
                             "calibration hold-out's tested (defective) images, never the test split")
    parser.add_argument("--feature-cache", help="reuse the teacher features of the training images from/to "
                        "this .pt file (ablations on the same images)")
    parser.add_argument("--on-error", choices=ON_ERROR, default="fail", help=ON_ERROR_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from defect_perception.training.anomaly.config import ConfigError, load_config
    from defect_perception.training.anomaly.data import (
        deeppcb_templates,
        good_images,
        load_images,
        split_train_calib,
    )
    from defect_perception.training.anomaly.export import export_model_dir
    from defect_perception.training.anomaly.train import (
        calibrate,
        fit,
        load_checkpoint,
        save_checkpoint,
        tune_scoring,
    )
    from defect_perception.training.cli_errors import usage_error
    from defect_perception.training.deeppcb import DatasetError, read_split

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scoring = {"border": args.border, "score": args.score, "topk_fraction": args.topk_fraction,
               "target_frr": args.target_frr}
    progress = not args.no_progress
    on_error = getattr(args, "on_error", None) or "fail"
    if args.tune_scoring and not args.deeppcb:
        return usage_error("train-anomaly", "--tune-scoring needs --deeppcb (defective validation images)")
    skipped: list[str] = []
    try:  # every file is read here, before training: a broken one stops the run at once, named
        if args.from_checkpoint:
            model, info = load_checkpoint(args.from_checkpoint, scoring)
            cfg = model.cfg
        else:
            cfg = load_config(args.config, {"steps": args.steps, "size": args.size, "threads": args.threads,
                                            **scoring})
        paths = (deeppcb_templates(args.deeppcb, on_error=on_error, skipped=skipped) if args.deeppcb
                 else good_images(args.images))
        train_p, calib_p = split_train_calib(paths, cfg.calib_fraction, cfg.seed)
        print(f"train-anomaly: {cfg.variant()}, {len(train_p)} training / {len(calib_p)} calibration "
              f"good images at {cfg.size} px", flush=True)
        calib_x, calib_p = load_images(calib_p, cfg.size, progress, on_error, skipped)
        if not args.from_checkpoint:
            train_x, train_p = load_images(train_p, cfg.size, progress, on_error, skipped)
            if not train_p:
                raise DatasetError("no readable good images left for training (all skipped)")
        if not calib_p:
            raise DatasetError("no readable good images left for calibration (all skipped)")
        if args.tune_scoring:  # the calibration hold-out's tested (defective) images
            calib_names = {p.name for p in calib_p}
            bad_p = [s.test_path for s in read_split(args.deeppcb, "trainval", on_error=on_error)
                     if s.temp_path.name in calib_names]
            bad_x, bad_p = load_images(bad_p, cfg.size, progress, on_error, skipped)
            if not bad_p:
                raise DatasetError("--tune-scoring: no readable tested images for the calibration hold-out")
    except (ConfigError, OSError, ValueError) as e:  # DatasetError is a ValueError
        return usage_error("train-anomaly", e)
    if skipped:
        print(f"train-anomaly: skipped {len(skipped)} bad input(s) (--on-error skip; see warnings above)",
              flush=True)
    if not args.from_checkpoint:
        model, info = fit(cfg, train_x, calib_x, progress=progress, feature_cache=args.feature_cache)
    if args.tune_scoring:
        grid = [{"border": b, "score": sc, "topk_fraction": k} for b in (0, 4, 8, 16)
                for sc, k in (("max", cfg.topk_fraction), ("topk", 0.0005), ("topk", 0.002))]
        chosen, table = tune_scoring(model, calib_x, bad_x, grid)
        info["scoring_selection"] = {"chosen": chosen, "table": table,
                                     "on": f"{len(calib_p)} held-out trainval templates (good) + their "
                                           f"{len(bad_p)} tested images (defective); not the test split"}
        print(f"scoring chosen on the calibration hold-out: {chosen}", flush=True)
    if args.tune_scoring or args.from_checkpoint:
        info.update(calibrate(model, calib_x))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.work_dir / "anomaly.pt", model, info)
    (args.work_dir / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"threshold {info['threshold']:.4f} for FRR <= {cfg.target_frr:.2%} on {len(calib_p)} held-out "
          f"good images (measured {info['calibration']['measured_frr']:.2%}); checkpoint "
          f"{args.work_dir / 'anomaly.pt'}", flush=True)
    if args.model_dir:
        dataset = (f"DeepPCB trainval templates ({args.deeppcb})" if args.deeppcb
                   else f"good images in {args.images}")
        card = export_model_dir(args.model_dir, args.name or args.model_dir.name, model, info, dataset,
                                calib_x[:4])
        par = card["provenance"]["export_parity"]
        print(f"exported {args.model_dir}/model.onnx (ONNX Runtime vs torch: map max abs diff "
              f"{par['map_max_abs']:.2e}, score {par['score_max_abs']:.2e})", flush=True)
    return 0
