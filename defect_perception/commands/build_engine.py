"""`defect-perception build-engine MODEL [--fp16|--fp32] [--int8 --calib-dir DIR] [--workspace MB]`

Builds the TensorRT engine for a model once, on the target (Jetson or x86 + NVIDIA GPU),
into the engine cache the inspector reads at launch; checks it against ONNX Runtime and
prints the figures. MODEL is a model directory (model.json + model.onnx) or its ONNX file.

Exit codes: 0 engine ready (built now, or cached and checked OK); 1 no usable engine: the
new engine disagrees with ONNX Runtime (MISMATCH; it is not cached), the cache records that
this model's engine failed its check (rerun with --force after changing precision or
calibration images), or TensorRT/the GPU is missing; 2 bad options.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model directory (model.json + model.onnx) or its model.onnx")
    prec = parser.add_mutually_exclusive_group()
    prec.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                      help="FP16 engine (default)")
    prec.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="FP32 engine")
    prec.add_argument("--int8", dest="precision", action="store_const", const="int8",
                      help="INT8 engine (with FP16 fallback); needs --calib-dir")
    parser.set_defaults(precision="fp16")
    parser.add_argument("--calib-dir", help="folder of representative images for INT8 calibration")
    parser.add_argument("--workspace", type=int, default=1024, metavar="MB",
                        help="builder workspace memory limit in MB (default 1024)")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="largest batch the engine accepts (tiles per frame; default 16)")
    parser.add_argument("--cache-dir", help="engine cache folder (default $DEFECT_PERCEPTION_ENGINE_CACHE "
                        "or ~/.cache/defect_perception/engines)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if a matching engine is cached or a previous build "
                        "failed the ONNX Runtime check")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from defect_perception.core.model_card import ModelCardError, load_card
    from defect_perception.core.paths import resolve
    from defect_perception.inference import tensorrt_backend
    from defect_perception.inference.engine_cache import EngineRejected
    from defect_perception.inference.errors import BackendUnavailable

    def say(msg: str) -> None:
        print(f"[build-engine] {msg}", flush=True)

    if args.precision == "int8" and not args.calib_dir:
        print("build-engine: --int8 needs --calib-dir DIR (representative images)", file=sys.stderr)
        return 2
    if args.workspace <= 0 or args.max_batch <= 0:
        print("build-engine: --workspace and --max-batch must be positive", file=sys.stderr)
        return 2
    path = resolve(args.model)
    try:
        card = load_card(path.parent if path.suffix == ".onnx" else path)
    except ModelCardError as e:
        print(f"build-engine: {e}", file=sys.stderr)
        return 1
    ok, why = tensorrt_backend.status()
    if not ok:
        print(f"build-engine: TensorRT is not usable on this machine: {why}.\n"
              "Install it on the target (JetPack, or `pip install 'defect_perception[tensorrt]'` with "
              "NVIDIA's index); see docs/tensorrt.md.", file=sys.stderr)
        return 1
    try:
        engine, report = tensorrt_backend.build_engine(
            card["_onnx"], card, precision=args.precision, calib_dir=args.calib_dir,
            workspace_mb=args.workspace, max_batch=args.max_batch,
            cache_root=Path(args.cache_dir) if args.cache_dir else None, force=args.force, log_fn=say)
    except EngineRejected as e:
        print(f"build-engine: no usable engine: {e}", file=sys.stderr)
        return 1
    except (BackendUnavailable, ModelCardError, FileNotFoundError, ValueError) as e:
        print(f"build-engine: {e}", file=sys.stderr)
        return 1
    if report and not report.get("ok"):  # never reached: a failed engine raises EngineRejected
        print(f"build-engine: {engine} failed its ONNX Runtime check", file=sys.stderr)
        return 1
    say(f"ready: {engine}")
    return 0
