"""Training configuration: one flat dataclass, read from YAML, overridden by CLI flags.

Unknown keys are refused with the closest valid name; the resolved config is written next to
the outputs (`config.yaml`) so every checkpoint says how it was made.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from defect_perception.core.yaml_file import read_yaml_mapping

METHODS = ("none", "hinton", "simkd", "labelfree")


class ConfigError(ValueError):
    """A config file or value that cannot be used; names the file and key."""


@dataclass
class TrainConfig:
    # data
    data: str = "deeppcb"               # "deeppcb" or "folder"
    root: str = ""                       # dataset folder (default for deeppcb: ../shared/datasets/deeppcb)
    tile: int = 128                      # tile side cut from the frame (px); the line cuts the same
    overlap: int = 32                    # tile overlap the line uses (written to the card)
    size: int = 64                       # model input side (px)
    color: str = "bgr"                   # card input colour; gray images are replicated to 3 channels
    normal_per_defect: float = 1.5       # DeepPCB: normal tiles per defect tile
    on_error: str = "fail"               # unreadable image / bad label line: fail | skip
    cache_dir: str = ""                  # cache of built tile sets (.npz); empty = no cache
    train_limit: int = 0                 # use at most this many training items (0 = all)
    val_limit: int = 0                   # validate on an evenly spaced subset of this size (0 = all)
    # model
    model: str = "efficientnet_b2"
    pretrained: bool = False
    init: str = ""                       # checkpoint to start from (user weights)
    freeze_stages: int = 0               # EfficientNet: freeze stem + first N stages (CPU budget)
    # distillation
    method: str = "none"                 # none | hinton | simkd | labelfree
    teacher: str = ""                    # teacher checkpoint (.pt) for KD methods
    temperature: float = 4.0             # hinton
    lam: float = 0.9                     # hinton: weight of the KD term
    alpha: float = 1.0                   # labelfree: MSE weight
    beta: float = 1.0                    # labelfree: BCE weight
    simkd_hidden: int = 128              # simkd projector bottleneck width
    hierarchy: bool = False              # add per-level heads + tree loss
    hier_alpha: float = 1.0              # weight of each coarse-level CE
    hier_beta: float = 1.0               # weight of each dependency term
    # optimisation
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 20
    eval_every: int = 50
    ckpt_every: int = 50
    seed: int = 0
    threads: int = 2
    device: str = "auto"                 # auto | cpu | cuda
    mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    augment: dict = field(default_factory=lambda: {"rot90": True, "flip": True, "rotate_deg": 0.0,
                                                   "brightness": 0.1, "contrast": 0.1})

    def validate(self) -> TrainConfig:
        if self.method not in METHODS:
            close = difflib.get_close_matches(self.method, METHODS, n=1)
            raise ConfigError(f"method {self.method!r} is not one of {METHODS}"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        if self.method != "none" and not self.teacher:
            raise ConfigError(f"method {self.method!r} needs a teacher checkpoint (teacher: path/to/best.pt)")
        if self.hierarchy and self.method == "labelfree":
            raise ConfigError("hierarchy needs labels for the coarse levels; label-free KD has none")
        if self.data not in ("deeppcb", "folder"):
            raise ConfigError(f"data must be 'deeppcb' or 'folder', got {self.data!r}")
        if self.on_error not in ("fail", "skip"):
            raise ConfigError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.color not in ("bgr", "gray"):
            raise ConfigError(f"color must be 'bgr' or 'gray', got {self.color!r}")
        for k in ("steps", "batch_size", "size", "tile", "eval_every", "ckpt_every", "threads"):
            if int(getattr(self, k)) <= 0:
                raise ConfigError(f"{k} must be > 0, got {getattr(self, k)!r}")
        if not 0 <= self.overlap < self.tile:
            raise ConfigError(f"overlap must be in [0, tile={self.tile}), got {self.overlap}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def merge(cfg: TrainConfig, values: dict[str, Any], origin: str = "override") -> TrainConfig:
    names = _names()
    types = {f.name: f.type for f in fields(TrainConfig)}
    for k, v in values.items():
        if v is None:
            continue
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            raise ConfigError(f"{origin}: unknown key {k!r}"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        cur = getattr(cfg, k)
        try:
            if types[k] in ("bool", bool) and not isinstance(v, bool):
                raise TypeError
            if isinstance(cur, (int, float)) and not isinstance(cur, bool):
                v = type(cur)(v)
            elif isinstance(cur, str):
                v = str(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: key {k!r} must be {type(cur).__name__}, got {v!r}") from None
        setattr(cfg, k, v)
    return cfg


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    cfg = TrainConfig()
    if path:
        merge(cfg, read_yaml_mapping(path, "training config", ConfigError), str(path))
    merge(cfg, overrides or {}, "command line")
    return cfg.validate()
