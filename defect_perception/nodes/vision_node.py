"""Generic frame -> model -> result node (base of `inspector` and `anomaly`).

What every vision node on the line does, in one place:
- receives `camera/image_raw` through `frame_io.FrameSubscriber` (zero-copy numpy view);
- keeps a bounded queue (`queue_depth`) served by ONE worker thread, so a slow model never
  blocks the executor; when the queue is full the oldest frame is answered at once with a
  `review` result ("skipped: ...") and counted: exactly one result per received frame;
- runs `inference.load_model(...).run()` and publishes the contract JSON on RESULT_TOPIC
  (stamp_ns = input stamp, frame_id = input frame_id), also when nothing is found;
- answers bad frames (encoding, size, truncated data), model errors and NaN outputs with
  the `fail_safe_verdict` and a `reason`, logging what was wrong (throttled): no silence,
  no crash loop. With no loadable model at start-up the node still runs and fails safe;
- thresholds, ROI and tiling change live; a new `model` path loads in a background thread
  and is swapped in atomically (failure keeps the old model and logs why);
- draws an overlay only when someone subscribes to OVERLAY_TOPIC; `/diagnostics` carries
  backend + reason, model, counters and per-stage latency percentiles.

Subclassing (e.g. the anomaly node):

    class AnomalyNode(VisionNode):
        NODE_NAME = SOURCE = "anomaly"
        RESULT_TOPIC, OVERLAY_TOPIC = "anomaly/result", None
        DEFAULT_MODEL = "models/deeppcb-anomaly"
        TASKS = ("anomaly",)
        THRESHOLD_PARAMS = (ThresholdParam("image_threshold", "image", None, "...", (-1e9, 1e9), -1e9),)

        @classmethod
        def extra_specs(cls): return [ParamSpec(...)]          # more parameters
        def create_outputs(self): self.heatmap = FramePublisher(self, "anomaly/heatmap", 2)
        def publish_extras(self, header, frame, result, extras):
            if "map" in extras and self.heatmap.subscription_count():
                self.heatmap.publish(header, extras["map"].astype(np.float32), "32FC1")

`extras` are the postprocess's non-contract keys (e.g. `map` in published-image pixels as
the anomaly postprocess returns it, `p_defect`, `tiles`). Hooks run in the worker thread.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.parameter import Parameter
from std_msgs.msg import Header, String

from defect_perception.core.image_conv import to_bgr8
from defect_perception.core.paths import resolve
from defect_perception.core.preprocess import InputError
from defect_perception.core.result import dumps, make_result
from defect_perception.nodes.base import Diagnostics, ParamNode, ParamSpec
from defect_perception.nodes.frame_io import FramePublisher, FrameSubscriber, stamp_ns

NATIVE = ("mono8", "8UC1", "bgr8", "8UC3")  # passed to the model without conversion
STAGES = ("convert", "queue", "preprocess", "infer", "postprocess", "publish", "total")


@dataclass(frozen=True)
class ThresholdParam:
    """A live parameter mapped onto a card threshold: `key` in card["thresholds"], `index`
    into a list value (review_band lo/hi) or None; `unset` means "use the card's value"."""

    name: str
    key: str
    index: int | None
    description: str
    range: tuple = (-1.0, 1.0)
    unset: float = -1.0


def _prob_or_unset(name: str):
    def check(v: float) -> str | None:
        if v != -1.0 and not 0.0 <= v <= 1.0:
            return f"{name}={v} must be -1 (model card value) or within [0, 1]"
        return None
    return check


def _class_thresholds(v: list) -> str | None:
    for item in v:
        label, sep, val = str(item).partition("=")
        try:
            ok = sep and label and 0.0 <= float(val) <= 1.0
        except ValueError:
            ok = False
        if not ok:
            return f"class_thresholds entry {item!r} is not 'label=probability' with probability in [0, 1]"
    return None


def _roi(v: list) -> str | None:
    if len(v) != 4 or any(int(x) < 0 for x in v):
        return (f"roi={list(v)} must be [x, y, width, height] with non-negative values "
                "([0, 0, 0, 0] = full frame)")
    return None


def _template_path(v: str) -> str | None:
    if v and not resolve(v).is_file():
        return f"template={v!r}: file not found"
    return None


def _size(v: list) -> str | None:
    if len(v) != 2 or any(int(x) < 0 for x in v):
        return f"expected_size={list(v)} must be [width, height] ([0, 0] = any size)"
    return None


class VisionNode(ParamNode):
    NODE_NAME = "inspector"
    SOURCE = "inspector"
    INPUT_TOPIC = "camera/image_raw"
    RESULT_TOPIC = "inspector/result"
    OVERLAY_TOPIC: str | None = "inspector/overlay"
    DEFAULT_MODEL = "models/deeppcb-student"
    TASKS: tuple[str, ...] = ("classification", "detection")
    THRESHOLD_PARAMS: tuple[ThresholdParam, ...] = (
        ThresholdParam("reject_threshold", "reject", None,
                       "Reject at/above this p(defect) (classifier) or detection score; "
                       "-1 = model card value."),
        ThresholdParam("review_lo", "review_band", 0,
                       "Lower edge of the review band (uncertain -> manual bin); -1 = model card value."),
        ThresholdParam("review_hi", "review_band", 1,
                       "Upper edge of the review band; -1 = model card value."),
        ThresholdParam("score_threshold", "score", None,
                       "Detector: minimum box score kept before NMS; -1 = model card value."),
        ThresholdParam("fine_min", "fine_min", None,
                       "Classifier: minimum fine-class probability, else the coarser label and review; "
                       "-1 = model card value."),
    )

    def __init__(self, node_name: str | None = None, **kwargs):
        self._started = False
        self._model = None
        self._model_error: str | None = None
        self._load_lock = threading.Lock()
        self._load_seq = 0
        self._busy_model = None
        specs = self.param_specs()
        for spec in specs:  # at start-up a bad model path fails safe instead of killing the node
            if spec.name == "model":
                spec.check = lambda v: self._check_model_path(v) if self._started else None
        super().__init__(node_name or self.NODE_NAME, specs, **kwargs)
        self._queue: deque = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._stage: dict[str, deque] = {s: deque(maxlen=500) for s in STAGES}
        self.result_pub = self.create_publisher(String, self.RESULT_TOPIC, 50)
        self.overlay_pub = FramePublisher(self, self.OVERLAY_TOPIC, depth=2) if self.OVERLAY_TOPIC else None
        self.diag = Diagnostics(self, period=float(self.p["diagnostics_period"]), extra=self._diag_extra)
        self.diag.level_fn = self._diag_level
        self.create_outputs()
        self._load_initial()
        self._worker = threading.Thread(target=self._work, name=f"{self.get_name()}-worker", daemon=True)
        self._worker.start()
        self.frames = FrameSubscriber(self, self.INPUT_TOPIC, self._on_frame, self._on_bad_frame,
                                      depth=int(self.p["input_depth"]),
                                      callback_group=MutuallyExclusiveCallbackGroup())
        self._started = True
        self.get_logger().info(
            f"listening on {self.frames.topic} -> {self.result_pub.topic_name}; "
            + (self._model.describe() if self._model else f"NO MODEL ({self._model_error}); failing safe"))

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def param_specs(cls) -> list[ParamSpec]:
        specs = [
            ParamSpec("model", cls.DEFAULT_MODEL, "Model directory (model.json + model.onnx), absolute or "
                      "relative to the package share directory. A change loads the new model in the "
                      "background and swaps it in without dropping frames."),
            ParamSpec("backend", "auto", "Inference backend (restart to change).",
                      choices=("auto", "tensorrt", "onnxruntime"), read_only=True),
            ParamSpec("precision", "fp16", "TensorRT engine precision (restart to change).",
                      choices=("fp32", "fp16", "int8"), read_only=True),
            ParamSpec("threads", 0, "ONNX Runtime intra-op threads, 0 = its default (restart to change).",
                      range=(0, 64), read_only=True),
            ParamSpec("class_thresholds", [], "Per-class reject thresholds, entries 'label=probability'.",
                      check=_class_thresholds, type_=Parameter.Type.STRING_ARRAY),
            ParamSpec("roi", [0, 0, 0, 0], "Region of interest [x, y, width, height] in pixels; "
                      "[0, 0, 0, 0] = full frame. Boxes are still reported in full-frame pixels.",
                      check=_roi, type_=Parameter.Type.INTEGER_ARRAY),
            ParamSpec("tiling_enable", True, "Tile large frames when the model card asks for tiling."),
            ParamSpec("tile", 0, "Tile size in pixels; 0 = model card value.", range=(0, 8192)),
            ParamSpec("tile_overlap", -1, "Tile overlap in pixels; -1 = model card value.", range=(-1, 4096)),
            ParamSpec("queue_depth", 4, "Frames waiting for inference; older frames beyond this get a "
                      "'review' result (skipped) at once.", range=(1, 64)),
            ParamSpec("fail_safe_verdict", "reject", "Verdict for frames that cannot be inspected "
                      "(bad frame, model error, NaN outputs, no model).", choices=("reject", "review")),
            ParamSpec("publish_overlay", True, "Draw and publish the overlay image (only while subscribed)."),
            ParamSpec("template", "", "Aligned defect-free image of the board (file) for models whose card "
                      "says input.template; empty = none. Live.", check=_template_path),
            ParamSpec("expected_size", [0, 0], "Expected frame [width, height]; other sizes fail safe, and "
                      "the model is warmed up at this size when it loads. [0, 0] = any size.", check=_size,
                      type_=Parameter.Type.INTEGER_ARRAY),
            ParamSpec("input_depth", 10, "QoS depth of the image subscription (restart to change).",
                      range=(1, 100), read_only=True),
            ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages (restart to change).",
                      range=(0.1, 60.0), read_only=True),
        ]
        for t in cls.THRESHOLD_PARAMS:
            specs.append(ParamSpec(t.name, float(t.unset), t.description, range=t.range,
                                   check=_prob_or_unset(t.name) if t.range == (-1.0, 1.0) else None))
        return specs + cls.extra_specs()

    @classmethod
    def extra_specs(cls) -> list[ParamSpec]:
        """Subclasses add their own parameters here."""
        return []

    @staticmethod
    def _check_model_path(value: str) -> str | None:
        p = resolve(value)
        card = p / "model.json" if p.suffix != ".onnx" else p.parent / "model.json"
        if not card.is_file():
            return f"model={value!r}: no model card at {card}"
        return None

    def on_params_changed(self, names: list[str]) -> None:
        if "model" in names:
            self._load_async(self.p["model"])
        model = self._model
        if model is not None:
            self._configure(model)

    def _threshold_overrides(self, model) -> dict:
        card_th = model.card.get("thresholds") or {}
        out: dict = {}
        for t in self.THRESHOLD_PARAMS:
            v = float(self.p[t.name])
            if t.index is None:
                out[t.key] = None if v == t.unset else v
        bands = [t for t in self.THRESHOLD_PARAMS if t.index is not None]
        for key in {t.key for t in bands}:
            band = list(card_th.get(key) or [None, None])
            changed = False
            for t in bands:
                if t.key == key and float(self.p[t.name]) != t.unset:
                    band[t.index] = float(self.p[t.name])
                    changed = True
            if changed and None in band:
                self.get_logger().warning(f"{key}: the model card has no {key}; set both edges "
                                          f"({', '.join(t.name for t in bands if t.key == key)})")
            elif changed and band[0] > band[1]:
                self.get_logger().warning(f"{key} {band}: lower edge above upper edge, band is empty")
            out[key] = band if changed and None not in band else None
        per_class = dict(str(s).split("=", 1) for s in self.p["class_thresholds"])
        out["per_class"] = {k: float(v) for k, v in per_class.items()} or None
        return out

    def _configure(self, model) -> None:
        """Apply live thresholds and tiling to a model (current one or one about to be swapped in)."""
        model.set_thresholds(**self._threshold_overrides(model))
        card_t = model.card.get("tiling") or {}
        tile = int(self.p["tile"]) or int(card_t.get("tile", 0))
        overlap = int(self.p["tile_overlap"])
        if overlap < 0:
            overlap = int(card_t.get("overlap", 0))
        try:
            model.set_tiling(tile, overlap, bool(self.p["tiling_enable"]) and tile > 0)
        except ValueError as e:
            self.get_logger().error(f"tiling not changed: {e}")
        if model.needs_template or self.p["template"]:
            try:
                model.set_template(self.p["template"] or None)
            except ValueError as e:  # frames then fail safe, naming the template problem
                self.get_logger().error(str(e))

    # -- model loading -----------------------------------------------------------------------
    def _load(self, path: str):
        from defect_perception.inference import load_model

        model = load_model(path, backend=self.p["backend"], threads=int(self.p["threads"]),
                           precision=self.p["precision"], source=self.SOURCE,
                           log_fn=self.get_logger().info)
        if model.task not in self.TASKS:
            model.close()
            raise ValueError(f"model {path!r} is a {model.task} model; node {self.get_name()} runs "
                             f"{', '.join(self.TASKS)}")
        self._configure(model)
        try:
            size = [int(v) for v in self.p["expected_size"]]
            took = model.warm_up((size[0], size[1]))
            self.get_logger().info(f"model {model.name} warmed up in {took * 1e3:.0f} ms"
                                   + (f" on a {size[0]}x{size[1]} frame" if all(size) else ""))
        except Exception as e:  # a warm-up problem must not keep the line from starting
            self.get_logger().warn(f"model {model.name}: warm-up skipped ({type(e).__name__}: {e})")
        return model

    def _load_advice(self, error: Exception) -> str:
        """What to change after a failed load: the read-only 'backend'/'precision' (restart)
        when the backend or its TensorRT engine is the problem, else the live 'model'."""
        from defect_perception.inference.engine_cache import EngineRejected
        from defect_perception.inference.errors import BackendUnavailable

        if isinstance(error, BackendUnavailable):
            return (f"backend {self.p['backend']!r} cannot run here: set the 'backend' parameter to auto or "
                    "onnxruntime (config/line.yaml, or -p backend:=onnxruntime) and restart the node; "
                    "'backend' is read only at start")
        if isinstance(error, EngineRejected):
            return (f"the TensorRT {self.p['precision']} engine was refused: rebuild it with "
                    "`defect-perception build-engine MODEL --force` (another precision or better "
                    "calibration images), or set 'backend' to onnxruntime or another 'precision' and "
                    "restart the node (both are read only at start)")
        return "fix the model files or set the 'model' parameter to a valid model folder"

    def _load_initial(self) -> None:
        try:
            self._model = self._load(self.p["model"])
        except Exception as e:
            self._model_error = f"{type(e).__name__}: {e}"
            self.get_logger().error(f"cannot load model {self.p['model']!r}: {self._model_error}. "
                                    f"Every frame gets '{self.p['fail_safe_verdict']}' until a model "
                                    f"loads ({self._load_advice(e)}).")

    def _load_async(self, path: str) -> None:
        with self._load_lock:
            self._load_seq += 1
            seq = self._load_seq

        def job():
            t0 = time.monotonic()
            try:
                model = self._load(path)
            except Exception as e:
                self._model_error = f"loading {path!r} failed: {type(e).__name__}: {e}"
                self.diag.stats.incr("model_load_failures")
                kept = self._model.name if self._model else "none"
                self.get_logger().error(f"{self._model_error}; keeping model {kept} ({self._load_advice(e)})")
                return
            with self._load_lock:
                if seq != self._load_seq:  # a newer request superseded this one
                    model.close()
                    return
                old, self._model, self._model_error = self._model, model, None
            self.get_logger().info(f"model swapped in {time.monotonic() - t0:.2f} s: "
                                   f"{old.name if old else 'none'} -> {model.describe()}")
            if old is not None:  # release it (GPU memory) once the worker has finished with it
                end = time.monotonic() + 30.0
                while self._busy_model is old and time.monotonic() < end:
                    time.sleep(0.01)
                old.close()

        threading.Thread(target=job, name=f"{self.get_name()}-loader", daemon=True).start()

    @property
    def model(self):
        return self._model

    # -- frames ----------------------------------------------------------------------------------
    def _on_frame(self, header: Header, arr: np.ndarray, encoding: str) -> None:
        item = (header, arr, encoding, time.perf_counter())
        dropped = []
        with self._cv:
            while len(self._queue) >= int(self.p["queue_depth"]):
                dropped.append(self._queue.popleft())
            self._queue.append(item)
            self._cv.notify()
        for h, *_ in dropped:
            self.diag.stats.incr("skipped")
            self._publish_fallback(h, "review", f"skipped: inference backlog (queue_depth "
                                   f"{self.p['queue_depth']}), frame not inspected")

    def _on_bad_frame(self, header: Header, exc: Exception) -> None:
        self.diag.stats.incr("bad_frames")
        self.get_logger().error(f"bad frame: {exc}", throttle_duration_sec=2.0)
        self._publish_fallback(header, self.p["fail_safe_verdict"], f"bad frame: {exc}")

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait(0.5)
                if self._stop:
                    pending = list(self._queue)
                    self._queue.clear()
                    break
                item = self._queue.popleft()
            try:
                self._process(*item)
            except Exception as e:  # publishing itself failed (shutdown): log, keep serving
                self.get_logger().error(f"worker: {type(e).__name__}: {e}", throttle_duration_sec=2.0)
        for h, *_ in pending:
            self._publish_fallback(h, self.p["fail_safe_verdict"], "node shutting down before inspection")

    def _process(self, header: Header, arr: np.ndarray, encoding: str, t_recv: float) -> None:
        t0 = time.perf_counter()
        model = self._busy_model = self._model
        extras: dict = {}
        frame = arr
        try:
            if model is None:
                raise RuntimeError(f"no model loaded ({self._model_error})")
            frame = arr if encoding in NATIVE else to_bgr8(arr, encoding)
            want = [int(v) for v in self.p["expected_size"]]
            if want[0] and want[1] and (frame.shape[1], frame.shape[0]) != tuple(want):
                raise InputError(f"frame is {frame.shape[1]}x{frame.shape[0]}, "
                                 f"expected_size is {want[0]}x{want[1]}")
            t1 = time.perf_counter()
            result, extras = model.run(frame, roi=self.p["roi"], stamp_ns=stamp_ns(header),
                                       frame_id=header.frame_id, source=self.SOURCE)
            result["latency_ms"]["convert"] = round((t1 - t0) * 1e3, 3)
        except Exception as e:
            kind = type(e).__name__
            self.diag.stats.incr("fail_safe")
            self.get_logger().error(f"frame {stamp_ns(header)}: {kind}: {e}", throttle_duration_sec=2.0)
            result = self._fallback(header, self.p["fail_safe_verdict"], f"{kind}: {e}", model)
        result["latency_ms"]["queue"] = round((t0 - t_recv) * 1e3, 3)
        tp = time.perf_counter()
        self.result_pub.publish(String(data=dumps(result)))
        t_end = time.perf_counter()
        lat = dict(result["latency_ms"], publish=(t_end - tp) * 1e3, total=(t_end - t_recv) * 1e3)
        with self.diag.stats.lock:
            for k, v in lat.items():
                if k in self._stage:
                    self._stage[k].append(v)
        self._busy_model = None
        self.diag.stats.add(lat["total"])
        self.diag.stats.incr(f"verdict_{result['verdict']}")
        try:
            self.publish_extras(header, frame, result, extras)
            if (self.overlay_pub is not None and self.p["publish_overlay"]
                    and self.overlay_pub.subscription_count() > 0):
                self.overlay_pub.publish(header, self.draw_overlay(frame, result, extras), "bgr8")
                self.diag.stats.incr("overlays")
        except Exception as e:
            self.get_logger().error(f"extra outputs: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    def _fallback(self, header: Header, verdict: str, reason: str, model=None) -> dict:
        model = model or self._model
        return make_result(stamp_ns=stamp_ns(header), frame_id=header.frame_id, source=self.SOURCE,
                           verdict=verdict, model=model.info if model else None, reason=reason)

    def _publish_fallback(self, header: Header, verdict: str, reason: str) -> None:
        self.diag.stats.incr(f"verdict_{verdict}")
        self.result_pub.publish(String(data=dumps(self._fallback(header, verdict, reason))))

    # -- hooks -----------------------------------------------------------------------------------
    def create_outputs(self) -> None:
        """Create extra publishers (called once in __init__, before the first frame)."""

    def publish_extras(self, header: Header, frame: np.ndarray, result: dict, extras: dict) -> None:
        """Publish extra outputs for one frame (worker thread). Default: nothing."""

    def draw_overlay(self, frame: np.ndarray, result: dict, extras: dict) -> np.ndarray:
        """bgr8 image with boxes, labels and the verdict drawn on the frame."""
        # always a new array: frames handed over in-process are read-only
        img = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else np.array(frame, copy=True)
        colour = {"pass": (0, 200, 0), "review": (0, 200, 255), "reject": (0, 0, 255)}[result["verdict"]]
        for d in result["detections"]:
            x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
            cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(img, f"{d['label']} {d['score']:.2f}", (x1, max(12, y1 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
        text = f"{result['verdict'].upper()} {result['label'] or ''} {result['score'] or 0:.2f}"
        cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, colour, 2, cv2.LINE_AA)
        return img

    # -- diagnostics / shutdown ------------------------------------------------------------------
    def _diag_level(self) -> tuple[int, str]:
        if self._model is None:
            return DiagnosticStatus.ERROR, f"no model: {self._model_error}"
        if self._model_error:
            return DiagnosticStatus.WARN, self._model_error
        return DiagnosticStatus.OK, f"{self._model.name} on {self._model.backend_name}"

    def _diag_extra(self) -> dict:
        m = self._model
        out = {"backend": m.backend_name if m else "none", "backend_reason": m.backend_reason if m else "",
               "model": m.name if m else "none", "model_sha256": m.sha256 if m else "",
               "model_path": self.p["model"], "queue": len(self._queue),
               "thresholds": m.thresholds if m else {}, "tiling": m.tiling if m else {},
               "queue_depth": self.p["queue_depth"],
               "dropped_before_node": getattr(self.frames, "drops", 0) if hasattr(self, "frames") else 0}
        with self.diag.stats.lock:
            stages = {k: list(v) for k, v in self._stage.items() if v}
        for k, v in stages.items():
            out[f"{k}_p50_ms"] = f"{float(np.percentile(v, 50)):.2f}"
        return out

    def close(self) -> None:
        """Stop receiving, stop the worker (pending frames get a fail-safe result), release the model."""
        frames = getattr(self, "frames", None)
        if frames is not None and hasattr(frames, "destroy"):
            frames.destroy()
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)
        if self._model is not None:
            self._model.close()
