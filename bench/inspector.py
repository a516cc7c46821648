"""Inspector per-frame latency breakdown at the line's frame size (640x640 mono8, DeepPCB).

Stages, timed per frame with the same code the node runs:
  receive   rclpy deserialisation of the sensor_msgs/Image + zero-copy numpy view
            (what the inspector process pays after DDS hands the bytes over)
  preprocess / infer / postprocess   Model.run() (its own latency_ms)
  publish   result JSON dumps + std_msgs/String publish through rclpy with a matched subscriber
Target (issue 4): everything except infer <= 10% of infer at p50.

    python bench/inspector.py [--model models/deeppcb-student] [--frames 300] [--threads 2]

Writes its section of docs/benchmarks.md (between the inspector markers) unless --no-write.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEEPPCB = Path(os.environ.get("DEEPPCB_DIR", REPO.parent / "shared" / "datasets" / "deeppcb"))
SHIPPED = ("models/deeppcb-student", "models/deeppcb-detector")
STAGES = ("receive", "preprocess", "infer", "postprocess", "publish")
BEGIN, END = "<!-- BEGIN inspector -->", "<!-- END inspector -->"


def pick_model(arg: str | None, tmp: str) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    for rel in SHIPPED:
        if (REPO / rel / "model.json").is_file():
            return REPO / rel, "shipped"
    return stand_in(Path(tmp)), "stand-in"


def stand_in(root: Path) -> Path:
    """No shipped model yet: a conv classifier of roughly EfficientNet-Lite cost at 224 px
    (built with onnx.helper, random weights). Numbers then say so."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from defect_perception.core.model_card import write_card

    rng = np.random.default_rng(0)
    nodes, inits, prev, cin = [], [], "input", 3
    for i, (cout, stride) in enumerate([(16, 2), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2),
                                        (128, 1), (192, 2)]):
        w = (rng.standard_normal((cout, cin, 3, 3)) * (2 / (9 * cin)) ** 0.5).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   strides=[stride] * 2),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, cin = f"r{i}", cout
    classes = ["normal", "open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]
    inits.append(numpy_helper.from_array((rng.standard_normal((cin, len(classes))) * 0.01).astype(np.float32),
                                         "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("MatMul", ["flat", "fc"], ["logits"])]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "stand-in", [vi("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [vi("logits", TensorProto.FLOAT, ["N", len(classes)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out = root / "stand-in"
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    write_card(out, {"name": "stand-in-conv224", "task": "classification",
                     "input": {"size": [224, 224], "color": "rgb", "scale": 255.0, "mean": [0.5],
                               "std": [0.5], "resize": "stretch"},
                     "outputs": [{"name": "logits", "meaning": "class logits"}], "classes": classes,
                     "pass_classes": ["normal"], "thresholds": {"reject": 0.5},
                     "metrics": {"split": "none"}, "provenance": {"note": "benchmark stand-in"}})
    return out


def load_frames(n: int) -> list[np.ndarray]:
    files = sorted(DEEPPCB.glob("group*/*/*_test.jpg"))[:n]
    if not files:
        raise SystemExit(f"no DeepPCB images under {DEEPPCB}")
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def run(model_dir: Path, frames: int, threads: int) -> dict:
    import rclpy
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from defect_perception import load_model
    from defect_perception.core.image_conv import fill_image, image_to_numpy
    from defect_perception.core.result import dumps
    from defect_perception.nodes.frame_io import header_from_ns

    model = load_model(model_dir, backend="auto", threads=threads)
    images = load_frames(50)
    raws = []
    for i, img in enumerate(images):
        msg = fill_image(Image(header=header_from_ns(i + 1, "camera")), img, "mono8")
        raws.append(serialize_message(msg))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("bench_inspector", context=ctx)
    pub = node.create_publisher(String, "inspector/result", 50)
    node.create_subscription(String, "inspector/result", lambda m: None, 50)
    t = {s: [] for s in STAGES}
    warm = 20
    t_start = None
    try:
        for i in range(frames + warm):
            if i == warm:
                t_start = time.perf_counter()
            raw = raws[i % len(raws)]
            t0 = time.perf_counter()
            msg = deserialize_message(raw, Image)
            arr = image_to_numpy(msg, "camera/image_raw")
            t1 = time.perf_counter()
            result, _ = model.run(arr, stamp_ns=i, frame_id=msg.header.frame_id)
            t2 = time.perf_counter()
            pub.publish(String(data=dumps(result)))
            t3 = time.perf_counter()
            if i >= warm:
                t["receive"].append((t1 - t0) * 1e3)
                for k in ("preprocess", "infer", "postprocess"):
                    t[k].append(result["latency_ms"][k])
                t["publish"].append((t3 - t2) * 1e3)
        wall = time.perf_counter() - t_start
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    stats = {s: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
             for s, v in t.items()}
    other = sum(stats[s]["p50"] for s in STAGES if s != "infer")
    tiles = result.get("tiles")
    return {"model": model.name, "task": model.task, "input": model.card["input"]["size"],
            "tiling": model.tiling, "tiles": tiles, "architecture": model.card.get("architecture"),
            "backend": model.backend_name, "backend_reason": model.backend_reason,
            "frames": frames, "fps": frames / wall, "stages": stats,
            "overhead_ratio": other / stats["infer"]["p50"], "threads": threads}


def machine() -> str:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores (shared with other jobs), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}")


def block(r: dict, origin: str) -> str:
    """One model's table and verdict on the target."""
    ok = r["overhead_ratio"] <= 0.10
    other_ms = r["overhead_ratio"] * r["stages"]["infer"]["p50"]
    local_ms = other_ms - r["stages"]["receive"]["p50"]
    rows = "\n".join(f"| {s} | {r['stages'][s]['p50']:.3f} | {r['stages'][s]['p99']:.3f} |" for s in STAGES)
    note = {"shipped": "the shipped model", "given": "given with --model",
            "stand-in": "a STAND-IN dense conv classifier (224 px, random weights; slower than "
                        "EfficientNet-Lite2), used when no model is shipped in models/"}[origin]
    arch = r.get("architecture")
    arch = f", {arch.get('type', '')} {arch.get('name', '')}".rstrip() if isinstance(arch, dict) else ""
    tiles = f", {r['tiles']} tiles/frame" if r.get("tiles") else ""
    return f"""### `{r['model']}` ({r['task']}{arch}, input {r['input']}{tiles}) - {note}

Backend: {r['backend']} ({r['backend_reason']}); {r['frames']} frames.

| stage | p50 ms | p99 ms |
|---|---|---|
{rows}

Throughput (one frame after another, all stages): **{r['fps']:.1f} frames/s**.
Everything except `infer` at p50 = **{100 * r['overhead_ratio']:.1f}% of infer** (target <= 10%):
**{'met' if ok else 'MISSED'}**; in absolute terms **{other_ms:.2f} ms**
({local_ms:.2f} ms without `receive`).
"""


def markdown(results: list[tuple[dict, str]], cmd: str) -> str:
    blocks = "\n".join(block(r, origin) for r, origin in results)
    return f"""{BEGIN}
## Inspector: per-frame latency (issue 4)

- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}
- Command: `{cmd}`
- Frames: DeepPCB test images, 640x640 mono8, one after another, after 20 warm-up frames.
- `receive` is the Python-side deserialisation + numpy view; DDS transport between processes adds
  about 1.7 ms p50 for this frame size (../shared/ENVIRONMENT.md), the in-process hand-off
  (`defect-perception line --in-process`) avoids both. Timings on this shared 2-core machine swing
  with the other jobs running (see the p99 column).

{blocks}
For scale: EfficientNet-Lite2 at 260 px takes 6.2-7.4 ms per image on ONNX Runtime CPU here
(../shared/ENVIRONMENT.md), so a non-tiled Lite2 classifier would need the stages around it to stay
under ~0.6 ms; a tiled classifier (one batch of tiles per frame) has far more slack.
{END}"""


def write_section(text: str, path: Path) -> None:
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append",
                    help="model directory, repeatable (default: shipped student, else detector, "
                         "else stand-in)")
    ap.add_argument("--stand-in", action="store_true", help="also measure the generated stand-in model")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_inspector_") as tmp:
        picks = [pick_model(m, tmp) for m in args.model] if args.model else [pick_model(None, tmp)]
        if args.stand_in and not any(o == "stand-in" for _, o in picks):
            picks.append((stand_in(Path(tmp)), "stand-in"))
        for model_dir, origin in picks:
            results.append((run(model_dir, args.frames, args.threads), origin))
    cmd = "python bench/inspector.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(results, cmd.strip())
    print(text)
    if args.json:
        raw = [r for r, _ in results]
        Path(args.json).write_text(json.dumps(raw[0] if len(raw) == 1 else raw, indent=2))
    if not args.no_write:
        write_section(text, REPO / "docs" / "benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
