"""`load_model(dir)` -> a callable `Model`: card -> preprocess -> backend -> postprocess.

    model = load_model("models/deeppcb-student")      # backend="auto" | "onnxruntime" | "tensorrt"
    result = model(image)                             # result dict of the JSON contract
    result, extras = model.run(image, roi=[x, y, w, h], stamp_ns=..., frame_id=...)

The nodes call `run()`, so what a script measures is what the line does. Thresholds and
tiling can change at any time (`set_thresholds`, `set_tiling`); each call reads one
consistent snapshot. Bad input raises `InputError`, bad outputs `OutputError`, a failing
backend `InferenceError`; the node turns each into a fail-safe result with the reason.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from defect_perception.core import postprocess as post
from defect_perception.core import tiling
from defect_perception.core.model_card import ModelCardError, load_card, sha256_file
from defect_perception.core.paths import resolve
from defect_perception.core.preprocess import InputError, Preprocessor, check_image, crop_roi
from defect_perception.core.result import make_result
from defect_perception.inference import backends
from defect_perception.inference.errors import InferenceError, ModelLoadError
from defect_perception.inference.input_shape import input_chw

log = logging.getLogger("defect_perception.inference")

CONTRACT_KEYS = ("verdict", "label", "score", "hierarchy", "detections", "anomaly_score", "reason")
REQUIRED_OUTPUTS = {"classification": ("logits",), "detection": ("boxes", "scores"),
                    "anomaly": ("map", "score")}
TILED_TASKS = ("classification", "detection")


def load_model(path: str | Path, backend: str = "auto", threads: int = 0, precision: str = "fp16",
               source: str = "inspector", log_fn: Callable[[str], None] | None = None,
               template: str | Path | np.ndarray | None = None) -> Model:
    """Read `<dir>/model.json` + its ONNX file, pick a backend, check the ONNX input/outputs
    against the card. Errors name the file and the field at fault."""
    log_fn = log_fn or log.info
    p = resolve(path)
    if p.suffix == ".onnx":
        p = p.parent
    card = load_card(p)
    onnx_path = card["_onnx"]
    sha = sha256_file(onnx_path)
    be, reason = backends.create(backend, onnx_path, card, threads=threads, precision=precision,
                                 log_fn=log_fn)
    try:
        check_io(be, card, onnx_path)
    except ModelCardError:
        be.close()
        raise
    model = Model(card, be, reason, sha, source=source)
    if template is not None:
        model.set_template(template)
    return model


def check_io(be, card: dict, onnx_path: str) -> None:
    """The ONNX input must be [N, C, H, W] with C and H, W from the card; the task's outputs
    must exist. Catches a card written for another export before the first frame."""
    input_chw(card, be.input_shape, onnx_path, be.input_name)
    missing = [o for o in REQUIRED_OUTPUTS[card["task"]] if o not in be.output_names]
    if missing:
        raise ModelLoadError(f"{onnx_path}: a {card['task']} model must have output(s) {missing}; "
                             f"it has {be.output_names}")


class Model:
    """One loaded model: `__call__(image) -> result`, `run(image) -> (result, extras)`."""

    def __init__(self, card: dict, backend, backend_reason: str, sha256: str, source: str = "inspector"):
        self.card = card
        self.name: str = card["name"]
        self.task: str = card["task"]
        self.sha256 = sha256
        self.backend = backend
        self.backend_name: str = backend.name
        self.backend_reason = backend_reason
        self.source = source
        self.pre = Preprocessor(card["input"])
        self._post = post.get(self.task)
        self._card_eff = card
        self._overrides: dict[str, Any] = {}
        self._template: np.ndarray | None = None
        t = card.get("tiling") or {}
        self._tiling = {"tile": int(t.get("tile", 0)), "overlap": int(t.get("overlap", 0)),
                        "enabled": bool(t)}

    # -- configuration (safe to call from another thread: one dict swap) -------------------
    @property
    def info(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}

    @property
    def thresholds(self) -> dict:
        return dict(self._card_eff.get("thresholds") or {})

    def set_thresholds(self, **overrides) -> dict:
        """Override card thresholds (`reject=0.7`, `review_band=[0.3, 0.6]`, `per_class={...}`);
        a value of None restores the card's. Returns the effective thresholds."""
        ov = dict(self._overrides)
        for k, v in overrides.items():
            if v is None:
                ov.pop(k, None)
            else:
                ov[k] = v
        card = {k: v for k, v in self.card.items() if k != "_tree"}
        card["thresholds"] = {**(self.card.get("thresholds") or {}), **copy.deepcopy(ov)}
        self._overrides, self._card_eff = ov, card
        return dict(card["thresholds"])

    @property
    def tiling(self) -> dict:
        return dict(self._tiling)

    def set_tiling(self, tile: int | None = None, overlap: int | None = None,
                   enabled: bool | None = None) -> dict:
        t = dict(self._tiling)
        if tile is not None:
            t["tile"] = int(tile)
        if overlap is not None:
            t["overlap"] = int(overlap)
        if enabled is not None:
            t["enabled"] = bool(enabled)
        if t["enabled"] and t["tile"] > 0:
            tiling.tile_grid(t["tile"], t["tile"], t["tile"], t["overlap"])  # raises on bad values
        self._tiling = t
        return dict(t)

    @property
    def needs_template(self) -> bool:
        return self.pre.template

    def set_template(self, template: np.ndarray | str | Path | None) -> None:
        """The aligned defect-free image of the board (array or image file) for models whose
        card says `input.template: true`; None clears it."""
        if template is None or isinstance(template, np.ndarray):
            self._template = None if template is None else check_image(template)
            return
        import cv2

        arr = cv2.imread(str(resolve(template)), cv2.IMREAD_GRAYSCALE)
        if arr is None:
            raise InputError(f"template image {template}: missing or not a readable image")
        self._template = arr

    def _with_template(self, img: np.ndarray, template: np.ndarray | None) -> np.ndarray:
        import cv2

        tpl = check_image(template) if template is not None else self._template
        if tpl is None:
            raise InputError(f"model {self.name} needs the aligned defect-free template (card "
                             "input.template); pass template=... or set the node's 'template' parameter")
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
        tpl = cv2.cvtColor(tpl, cv2.COLOR_BGR2GRAY) if tpl.ndim == 3 else tpl
        if tpl.shape != gray.shape:
            raise InputError(f"template is {tpl.shape[1]}x{tpl.shape[0]}, frame is "
                             f"{gray.shape[1]}x{gray.shape[0]}: they must be aligned and the same size")
        return np.dstack([gray, tpl])

    # -- inference -----------------------------------------------------------------------
    def __call__(self, image: np.ndarray, **kwargs) -> dict:
        return self.run(image, **kwargs)[0]

    def run(self, image: np.ndarray, *, roi=None, stamp_ns: int = 0, frame_id: str = "",
            source: str | None = None, template: np.ndarray | None = None) -> tuple[dict, dict]:
        t0 = time.perf_counter()
        card, tcfg = self._card_eff, self._tiling
        img = check_image(image)
        if self.pre.template:
            img = self._with_template(img, template)
        crop, (ox, oy) = crop_roi(img, roi)
        size = img.shape[:2]
        h, w = crop.shape[:2]
        tiled = (tcfg["enabled"] and tcfg["tile"] > 0 and self.task in TILED_TASKS
                 and (h > tcfg["tile"] or w > tcfg["tile"]))
        if tiled:
            grid = tiling.tile_grid(h, w, tcfg["tile"], tcfg["overlap"])
            batch, tfs = self.pre.tiles(crop, grid, (ox, oy), size, reuse=True)
        else:
            grid = None
            batch, tf = self.pre(crop, (ox, oy), size, reuse=True)
            tfs = [tf]
        t1 = time.perf_counter()
        outputs = self.infer(batch)
        t2 = time.perf_counter()
        fields = self._postprocess(outputs, card, tfs, grid, (ox, oy), size)
        t3 = time.perf_counter()
        extras = {k: fields.pop(k) for k in list(fields) if k not in CONTRACT_KEYS}
        result = make_result(stamp_ns=stamp_ns, frame_id=frame_id, source=source or self.source,
                             model=self.info, latency_ms={"preprocess": (t1 - t0) * 1e3,
                                                          "infer": (t2 - t1) * 1e3,
                                                          "postprocess": (t3 - t2) * 1e3},
                             **fields)
        if tiled:  # optional extension field (JSON-safe): how many tiles were inspected
            result["tiles"] = extras["tiles"] = len(grid)
        return result, extras

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the backend on an NCHW batch, in chunks when the model's batch is fixed."""
        mb = self.backend.max_batch or len(batch)
        try:
            if len(batch) <= mb:
                return self.backend.run(batch)
            parts = [self.backend.run(batch[i:i + mb]) for i in range(0, len(batch), mb)]
        except Exception as e:
            raise InferenceError(f"{self.backend_name} failed on model {self.name} "
                                 f"(input {list(batch.shape)}): {str(e).strip()[:300]}") from e
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _postprocess(self, outputs, card, tfs, grid, offset, size) -> dict:
        n = len(tfs)
        for name, arr in outputs.items():
            if arr.shape[:1] != (n,):
                raise post.OutputError(f"model output {name!r} has batch {arr.shape[:1]}, expected {n}")
        per = [{k: v[i:i + 1] for k, v in outputs.items()} for i in range(n)]
        if grid is None:
            return self._post(per[0], card, {"transform": tfs[0], "image_size": size})
        if self.task == "detection":
            from defect_perception.core.postprocess import detection

            cands = [detection.candidates(o, card, {"transform": tf, "image_size": size})
                     for o, tf in zip(per, tfs, strict=False)]
            boxes = np.concatenate([c[0] for c in cands]).reshape(-1, 4)
            return detection.finalize(boxes, np.concatenate([c[1] for c in cands]),
                                      np.concatenate([c[2] for c in cands]), card)
        if self.task == "classification":
            from defect_perception.core.postprocess import classification

            return classification.merge_tiles(outputs, card, grid, offset)
        tile_results = [self._post(o, card, {"transform": tf, "image_size": size})
                        for o, tf in zip(per, tfs, strict=True)]
        return tiling.merge_classification(tile_results, grid, offset)

    def warm_up(self, frame_size: tuple[int, int] | None = None) -> float:
        """Run once on a blank frame before the first part arrives, so that part does not pay
        for the backend's lazy initialisation and allocations (on a CPU that can push it past
        the sorter's deadline: a fail-safe reject at every start). `frame_size` (width, height)
        warms the full path, tiling included; without it, one network input. Seconds taken."""
        t0 = time.perf_counter()
        w, h = frame_size or (0, 0)
        if w > 0 and h > 0 and (self._template is not None or not self.needs_template):
            blank = np.zeros((h, w), np.uint8)
            self.run(blank, template=blank if self.needs_template else None)
        else:
            self.infer(np.zeros((1, self.pre.channels, self.pre.height, self.pre.width), np.float32))
        return time.perf_counter() - t0

    def run_batch(self, images: list[np.ndarray], **kwargs) -> list[dict]:
        """Several whole images (same size) in one backend call; for evaluation tools."""
        if not images:
            return []
        if self.pre.template:
            images = [self._with_template(check_image(i), kwargs.get("template")) for i in images]
        batch, tfs = self.pre.batch(images, [(0, 0)] * len(images), images[0].shape[:2])
        outputs = self.infer(batch)
        card = self._card_eff
        out = []
        for i, tf in enumerate(tfs):
            fields = self._post({k: v[i:i + 1] for k, v in outputs.items()}, card,
                                {"transform": tf, "image_size": images[i].shape[:2]})
            fields = {k: v for k, v in fields.items() if k in CONTRACT_KEYS}
            out.append(make_result(stamp_ns=kwargs.get("stamp_ns", 0), frame_id=kwargs.get("frame_id", ""),
                                   source=self.source, model=self.info, **fields))
        return out

    def describe(self) -> str:
        inp = self.card["input"]
        return (f"model {self.name} ({self.task}, sha256 {self.sha256[:12]}) backend {self.backend_name}: "
                f"{self.backend_reason}; input {inp['size']} {inp.get('color', 'bgr')} "
                f"{inp.get('resize', 'stretch')}; thresholds {self.thresholds}; tiling {self._tiling}")

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return f"<Model {self.name} {self.task} backend={self.backend_name}>"

