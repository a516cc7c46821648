"""`defect-perception make-sample`: build the bundled sample recording from DeepPCB.

Takes N samples spread evenly over the DeepPCB TEST split; each gives its defect-free
template (label pass) and its tested image (label reject, with the annotated defect types).
The 2N frames are shuffled with a fixed seed (so a pass is not always followed by its
reject) and written as mono8 640x640 frames 0.2 s apart to a zstd-compressed mcap bag:
/line/camera/image_raw, /line/camera/camera_info (same stamps) and /line/camera/label,
plus a `labels.json` sidecar beside the bag. Same inputs => byte-identical labels and frames.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

FIRST_STAMP_NS = 1_700_000_000_000_000_000  # fixed, so part keys are the same on every machine
PERIOD_NS = 200_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deeppcb", type=Path, default=None,
                        help="DeepPCB folder (default: $DEEPPCB_DIR or ../shared/datasets/deeppcb)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output bag folder (default: data/sample/deeppcb_sample in the package)")
    parser.add_argument("--n", type=int, default=12, help="templates and tested images each (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--namespace", default="/line", help="topic namespace (default /line)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")


def _default_deeppcb() -> Path:
    import os

    from defect_perception.core.paths import share_dir

    env = os.environ.get("DEEPPCB_DIR")
    return Path(env) if env else share_dir().parent / "shared" / "datasets" / "deeppcb"


def select(samples: list, n: int, seed: int) -> list[dict]:
    """2n frame descriptions (template/tested of n evenly spread samples), shuffled by seed."""
    if n < 1 or n > len(samples):
        raise ValueError(f"--n {n} must be between 1 and {len(samples)} (samples in the test split)")
    picks = [samples[round(k * (len(samples) - 1) / max(1, n - 1))] for k in range(n)] if n > 1 \
        else [samples[0]]
    frames = []
    for s in picks:
        frames.append({"file": s.temp_path, "label": "pass", "defect_types": [], "sample": s.name})
        frames.append({"file": s.test_path, "label": "reject", "defect_types": sorted(set(s.types)),
                       "sample": s.name})
    random.Random(seed).shuffle(frames)
    return frames


def run(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from defect_perception.core.paths import share_dir
    from defect_perception.recording import TS, camera_info_cdr, image_cdr, open_writer, string_cdr
    from defect_perception.sources.calibration import default_calibration
    from defect_perception.training.deeppcb import DatasetError, read_split

    root = args.deeppcb or _default_deeppcb()
    out = args.out or share_dir() / "data" / "sample" / "deeppcb_sample"
    try:
        samples = read_split(root, "test")
        frames = select(samples, args.n, args.seed)
    except (DatasetError, ValueError) as e:
        print(f"make-sample: {e}")
        return 1
    if out.exists():
        if not args.force:
            print(f"make-sample: {out} exists; pass --force to replace it")
            return 1
        shutil.rmtree(out)
    ns = "/" + args.namespace.strip("/") if args.namespace.strip("/") else ""
    writer = open_writer(out, args.storage, compress=True)
    try:
        c_img = writer.add_connection(f"{ns}/camera/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        c_info = writer.add_connection(f"{ns}/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TS)
        c_lab = writer.add_connection(f"{ns}/camera/label", "std_msgs/msg/String", typestore=TS)
        sidecar = []
        for i, f in enumerate(tqdm(frames, desc="make-sample", unit="frame")):
            img = cv2.imread(str(f["file"]), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise RuntimeError(f"cannot read image {f['file']}")
            stamp = FIRST_STAMP_NS + i * PERIOD_NS
            writer.write(c_img, stamp, image_cdr(img, "mono8", stamp, "camera"))
            writer.write(c_info, stamp, camera_info_cdr(default_calibration(img.shape[1], img.shape[0]),
                                                        stamp, "camera"))
            entry = {"stamp_ns": stamp, "label": f["label"], "defect_types": f["defect_types"], "index": i}
            writer.write(c_lab, stamp, string_cdr(json.dumps(entry)))
            sidecar.append({**entry, "sample": f["sample"],
                            "source_file": str(Path(f["file"]).relative_to(root))})
    except BaseException:
        writer.close()
        shutil.rmtree(out, ignore_errors=True)
        raise
    writer.close()
    (out / "labels.json").write_text(json.dumps(
        {"dataset": "DeepPCB test split (Tang et al. 2019), research use only",
         "topic": f"{ns}/camera/image_raw", "frames": sidecar}, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    n_rej = sum(f["label"] == "reject" for f in frames)
    print(f"make-sample: wrote {len(frames)} frames ({len(frames) - n_rej} pass, {n_rej} reject) to {out}"
          f" ({size / 1e6:.2f} MB, {args.storage})")
    return 0
