"""Training configuration for the teacher-student anomaly model.

One dataclass, mirrored by `config/train/anomaly*.yaml`; command-line flags override it.
Unknown YAML keys are refused with the closest valid name, so a typo never trains silently
with a default.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from defect_perception.core.yaml_file import read_yaml_mapping


@dataclass
class AnomalyConfig:
    # data
    size: int = 256                      # square input side after stretch resize (px)
    calib_fraction: float = 0.15         # good images held out for threshold calibration
    seed: int = 0
    # teacher: frozen ImageNet EfficientNet-Lite trunk; feature blocks (block 1: stride 4, 2: stride 8)
    teacher: str = "lite0"
    pretrained: bool = True
    blocks: list[int] = field(default_factory=lambda: [1, 2])
    # method switches (ablation: base, +ema_norm, +coupling, +context)
    ema_norm: bool = True
    ema_momentum: float = 0.01
    coupling: bool = True
    coupling_hidden: int = 64
    coupling_clamp: float = 2.0
    context: bool = True
    context_grid: int = 8                # global branch: attention over a grid x grid token map
    student_width: int = 32
    # training
    batch: int = 8
    crop: int = 0                        # stage 2 trains on random crops of this side (0 = whole image)
    stage1_steps: int = 300              # EMA statistics (+ coupling NLL) on teacher features
    steps: int = 1500                    # stage 2: student regresses the (normalised, coupled) teacher
    lr: float = 1e-3
    weight_decay: float = 1e-5
    threads: int = 1
    # scoring
    score: str = "topk"                  # max | topk (mean of the top `topk_fraction` map pixels)
    topk_fraction: float = 0.002
    blur_sigma: float = 2.0              # Gaussian smoothing of the map, in input pixels (0 = off)
    border: int = 0                      # map set to 0 this many px from the image edge (0 = off)
    # calibration
    target_frr: float = 0.01             # false-reject rate on held-out good images
    review_frr: float = 0.05             # good-image rate at which the review band starts

    # options that change only scoring (not the weights): a checkpoint can be re-scored with them
    SCORING = ("score", "topk_fraction", "blur_sigma", "border", "target_frr", "review_frr")

    def variant(self) -> str:
        parts = ["base"]
        parts += [n for n, on in (("ema", self.ema_norm), ("coupling", self.coupling),
                                  ("context", self.context)) if on]
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConfigError(ValueError):
    """A training config that cannot be used; names the file and key."""


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AnomalyConfig:
    """Read a YAML config (optional) and apply overrides (None values ignored)."""
    data: dict[str, Any] = {}
    src = "overrides"
    if path is not None:
        src = str(path)
        data = read_yaml_mapping(path, "anomaly config", ConfigError)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    names = {f.name for f in fields(AnomalyConfig)}
    for key in data:
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{src}: unknown key {key!r}{did}"
                              + f"; valid keys: {', '.join(sorted(names))}")
    cfg = AnomalyConfig(**data)
    if cfg.score not in ("max", "topk"):
        raise ConfigError(f"{src}: score={cfg.score!r} must be 'max' or 'topk'")
    if not 0 < cfg.target_frr < 1 or not cfg.target_frr <= cfg.review_frr < 1:
        raise ConfigError(f"{src}: need 0 < target_frr ({cfg.target_frr}) <= review_frr "
                          f"({cfg.review_frr}) < 1")
    if cfg.size % 16:
        raise ConfigError(f"{src}: size={cfg.size} must be a multiple of 16")
    if cfg.crop and (cfg.crop % 16 or not 32 <= cfg.crop <= cfg.size):
        raise ConfigError(f"{src}: crop={cfg.crop} must be 0 or a multiple of 16 in [32, size={cfg.size}]")
    return cfg
