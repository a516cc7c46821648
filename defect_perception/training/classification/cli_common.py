"""Shared pieces of the classifier commands (train-teacher, distill, evaluate, export):
argument groups, dataset loading from a config, and the exit-code policy
(0 ok, 1 runtime failure, 2 usage / bad input)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (see config/train/deeppcb_*.yaml)")
    parser.add_argument("--data", type=Path, help="dataset folder: DeepPCB root, or one folder per class "
                                                  "(optional tree.txt, labels.csv, train/val/test)")
    parser.add_argument("--data-kind", choices=("deeppcb", "folder"), help="layout of --data")
    parser.add_argument("--on-error", choices=("fail", "skip"),
                        help="unreadable image / bad label line: stop (fail) or report and skip")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, config, log)")
    parser.add_argument("--model", help="architecture by name (e.g. tf_efficientnet_lite0, efficientnet_b2)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="start from the shipped ImageNet weights (EfficientNet-Lite only)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--train-limit", type=int, help="use at most N training items")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt if present")
    parser.add_argument("--export", type=Path, metavar="MODEL_DIR",
                        help="after training, write model.onnx + model.json (test metrics) here")


def overrides(args: argparse.Namespace) -> dict:
    keys = {"model": "model", "pretrained": "pretrained", "steps": "steps", "batch_size": "batch_size",
            "lr": "lr", "seed": "seed", "threads": "threads", "device": "device",
            "train_limit": "train_limit",
            "on_error": "on_error", "data_kind": "data", "method": "method", "teacher": "teacher",
            "hierarchy": "hierarchy"}
    out = {dst: getattr(args, src) for src, dst in keys.items() if getattr(args, src, None) is not None}
    if getattr(args, "data", None) is not None:
        out["root"] = str(args.data)
    if getattr(args, "teacher", None) is not None:
        out["teacher"] = str(args.teacher)
    return out


def load_parts(cfg, progress: bool = True) -> dict:
    """{'train','val','calib','test'} TileSets for the config's dataset."""
    from defect_perception.training import deeppcb
    from defect_perception.training.classification import data

    if cfg.data == "deeppcb":
        root = Path(cfg.root) if cfg.root else deeppcb.DEFAULT_ROOT
        parts = data.deeppcb_parts(root, cfg.tile, cfg.size, seed=0, normal_per_defect=cfg.normal_per_defect,
                                   on_error=cfg.on_error,
                                   cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
                                   progress=progress)
    else:
        if not cfg.root:
            raise data.DatasetError("data: folder needs a dataset folder "
                                    "(--data PATH or root: in the config)")
        parts = data.folder_parts(Path(cfg.root), cfg.size, "gray" if cfg.color == "gray" else "bgr",
                                  on_error=cfg.on_error, progress=progress)
    if cfg.train_limit and len(parts["train"]) > cfg.train_limit:
        import numpy as np

        idx = np.random.default_rng(cfg.seed).permutation(len(parts["train"]))[:cfg.train_limit]
        parts["train"] = parts["train"].subset(np.sort(idx))
    skipped = sum(len(p.skipped) for p in parts.values())
    if skipped:
        print(f"skipped {skipped} bad inputs (see warnings above)", flush=True)
    return parts


def train_main(args: argparse.Namespace, command: str) -> int:
    from defect_perception.training.classification.config import ConfigError, load_config
    from defect_perception.training.deeppcb import DatasetError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        over = overrides(args)
        if command == "train-teacher":
            over["method"] = "none"
        cfg = load_config(args.config, over)
        parts = load_parts(cfg, progress=not args.no_progress)
    except (ConfigError, DatasetError, ValueError) as e:
        print(f"{command}: {e}")
        return 2
    from defect_perception.training.classification.train import fit

    counts = parts["train"].counts()
    print(f"{command}: {cfg.method} {cfg.model} on {len(parts['train'])} training items {counts}, "
          f"{len(parts['val'])} validation items, {cfg.steps} steps", flush=True)
    try:
        summary = fit(cfg, parts["train"], parts["val"], args.out, progress=not args.no_progress,
                      resume=args.resume)
    except (FileNotFoundError, ValueError) as e:
        print(f"{command}: {e}")
        return 2
    if summary["rank"] != 0:
        return 0
    print(json.dumps(summary), flush=True)
    if args.export:
        return export_main(args.out / "best.pt", args.export, None, parts["test"])
    return 0


def export_main(ckpt_path: Path, out_dir: Path, name: str | None, test=None, thresholds: dict | None = None,
                dataset: str = "") -> int:
    from defect_perception.training.classification import evaluate
    from defect_perception.training.classification.export import write_model_dir
    from defect_perception.training.classification.train import load_checkpoint, predict

    model, ck = load_checkpoint(ckpt_path)
    metrics = {}
    if test is not None and len(test):
        m = evaluate.metrics(test.labels, predict(model, test, ck["input"]), test.classes, test.tree)
        split = "DeepPCB test (official), tiles" if ck["config"].get("data") == "deeppcb" else "test"
        metrics = {"split": split, "n": m["n"], "accuracy": m["accuracy"],
                   "macro_precision": m["macro_precision"], "macro_recall": m["macro_recall"],
                   "macro_f1": m["macro_f1"], "defect": m.get("defect"), "per_level": m.get("per_level")}
    prov = {"checkpoint": str(ckpt_path),
            "dataset": dataset or ck["config"].get("root") or ck["config"]["data"]}
    if ck["config"].get("data") == "deeppcb":
        prov["dataset"] = "DeepPCB (Tang et al. 2019), ../shared/datasets/deeppcb"
        prov["note"] = ("DeepPCB is a research-use dataset: this model is a demo/evaluation artefact. "
                        "Train production models on your own images (docs/training.md).")
    card = write_model_dir(model, ck, out_dir, name, metrics, thresholds, prov)
    print(f"exported {out_dir}/model.onnx (+ model.json); ONNX parity max |diff| "
          f"{card['provenance']['onnx_parity_max_abs_diff']:.2e}", flush=True)
    return 0
