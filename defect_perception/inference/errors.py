"""Runtime errors; every message names the file, output or value at fault."""
from __future__ import annotations

from defect_perception.core.model_card import ModelCardError


class ModelLoadError(ModelCardError):
    """A model that cannot be loaded: missing/corrupt ONNX, input shape vs card mismatch."""


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (package or GPU missing); says which."""


class InferenceError(RuntimeError):
    """A backend run that failed for one frame (the node answers with the fail-safe verdict)."""
