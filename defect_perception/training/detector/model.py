"""YOLO-style detector: CSP backbone, SPP, FPN+PAN neck, three detection scales.

The network is rebuilt from a plain config dict plus a state_dict: pruned models change
tensor shapes and drop residual blocks, so the config records `removed_blocks` and the
per-layer shapes are taken from the state_dict when rebuilding (no pickled modules).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

STRIDES = (8, 16, 32)
# A neutral default (input pixels at 320 px); training replaces it with K-means++ anchors.
DEFAULT_ANCHORS = [[6, 6], [10, 10], [14, 14], [18, 18], [24, 24], [30, 30], [38, 38], [50, 50], [70, 70]]


@dataclass
class DetectorConfig:
    in_channels: int = 1
    num_classes: int = 6
    width: float = 0.125  # multiplier on (64, 128, 256, 512, 1024)
    depth: tuple[int, ...] = (1, 2, 2, 1)  # residual blocks per backbone stage
    neck_depth: int = 1
    img_size: int = 320
    anchors: list[list[float]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_ANCHORS))
    removed_blocks: list[str] = field(default_factory=list)  # layer pruning (module names)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown detector config keys {sorted(unknown)} (known: {sorted(known)})")
        d = dict(d)
        if "depth" in d:
            d["depth"] = tuple(d["depth"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depth"] = list(self.depth)
        return d


class Conv(nn.Sequential):
    """Conv + BN + SiLU; the BN gamma is what sparsity training and pruning act on."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (+ shortcut). cv2.bn is 'the conv before the shortcut' for layer pruning."""

    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = Conv(c, c, 1)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block: two 1x1 branches, residual blocks on one, concat, 1x1 fuse."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        c = max(c_out // 2, 1)
        self.cv1 = Conv(c_in, c, 1)
        self.cv2 = Conv(c_in, c, 1)
        self.m = nn.Sequential(*(Bottleneck(c, shortcut) for _ in range(n)))
        self.cv3 = Conv(2 * c, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class SPP(nn.Module):
    """Spatial pyramid pooling (5, 9, 13 max-pools) widening the P5 receptive field."""

    def __init__(self, c_in: int, c_out: int, ks: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c = max(c_in // 2, 1)
        self.cv1 = Conv(c_in, c, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in ks)
        self.cv2 = Conv(c * (len(ks) + 1), c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [p(x) for p in self.pools], 1))


def _ch(base: int, width: float) -> int:
    return max(8, int(round(base * width / 8)) * 8)


class YoloDetector(nn.Module):
    """forward(x) -> list of 3 raw maps [B, na*(5+C), H/s, W/s] (strides 8, 16, 32)."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3, c4, c5 = (_ch(b, cfg.width) for b in (64, 128, 256, 512, 1024))
        d, nd = cfg.depth, cfg.neck_depth
        self.stem = Conv(cfg.in_channels, c1, 3, 2)
        self.stage1 = nn.Sequential(Conv(c1, c2, 3, 2), C3(c2, c2, d[0]))
        self.stage2 = nn.Sequential(Conv(c2, c3, 3, 2), C3(c3, c3, d[1]))
        self.stage3 = nn.Sequential(Conv(c3, c4, 3, 2), C3(c4, c4, d[2]))
        self.stage4 = nn.Sequential(Conv(c4, c5, 3, 2), C3(c5, c5, d[3]), SPP(c5, c5))
        self.lat5 = Conv(c5, c4, 1)
        self.td4 = C3(2 * c4, c4, nd, shortcut=False)
        self.lat4 = Conv(c4, c3, 1)
        self.td3 = C3(2 * c3, c3, nd, shortcut=False)
        self.down3 = Conv(c3, c3, 3, 2)
        self.bu4 = C3(2 * c3, c4, nd, shortcut=False)
        self.down4 = Conv(c4, c4, 3, 2)
        self.bu5 = C3(2 * c4, c5, nd, shortcut=False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.na = len(cfg.anchors) // 3
        self.no = 5 + cfg.num_classes
        self.head = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in (c3, c4, c5))
        self.register_buffer("anchors", torch.tensor(cfg.anchors, dtype=torch.float32).view(3, self.na, 2))
        self.register_buffer("strides", torch.tensor(STRIDES, dtype=torch.float32))
        self._init_bias()
        for name in cfg.removed_blocks:
            _set_module(self, name, nn.Identity())

    def _init_bias(self) -> None:
        """Start with low objectness / class probability (stable early training)."""
        for conv, s in zip(self.head, STRIDES, strict=False):
            b = conv.bias.view(self.na, -1)
            with torch.no_grad():
                b[:, 4] = -4.0 - 0.5 * (s == 8)
                b[:, 5:] = -2.0

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p2 = self.stage1(self.stem(x))
        p3 = self.stage2(p2)
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)
        l5 = self.lat5(p5)
        t4 = self.td4(torch.cat([self.up(l5), p4], 1))
        l4 = self.lat4(t4)
        o3 = self.td3(torch.cat([self.up(l4), p3], 1))
        o4 = self.bu4(torch.cat([self.down3(o3), l4], 1))
        o5 = self.bu5(torch.cat([self.down4(o4), l5], 1))
        return [h(o) for h, o in zip(self.head, (o3, o4, o5), strict=False)]

    def residual_blocks(self) -> dict[str, Bottleneck]:
        """Backbone residual blocks that layer pruning may drop (shortcut ones only)."""
        return {n: m for n, m in self.named_modules() if isinstance(m, Bottleneck) and m.add}


class DetectExport(nn.Module):
    """Wraps the detector with in-graph box decoding for ONNX: outputs `boxes` [N, K, 4]
    (x1, y1, x2, y2 in input pixels) and `scores` [N, K, C] = objectness x class prob."""

    def __init__(self, model: YoloDetector):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decode(self.model(x), self.model.anchors, self.model.strides, self.model.na)


def decode(
    raw: list[torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor, na: int
) -> tuple[torch.Tensor, torch.Tensor]:
    boxes, scores = [], []
    for i, p in enumerate(raw):
        b, _, h, w = p.shape
        p = p.view(b, na, -1, h, w).permute(0, 1, 3, 4, 2).sigmoid()
        gy, gx = torch.meshgrid(
            torch.arange(h, dtype=p.dtype, device=p.device),
            torch.arange(w, dtype=p.dtype, device=p.device),
            indexing="ij",
        )
        grid = torch.stack((gx, gy), -1).view(1, 1, h, w, 2)
        xy = (p[..., :2] * 2 - 0.5 + grid) * strides[i]
        wh = (p[..., 2:4] * 2) ** 2 * anchors[i].view(1, na, 1, 1, 2)
        boxes.append(torch.cat((xy - wh / 2, xy + wh / 2), -1).reshape(b, -1, 4))
        scores.append((p[..., 5:] * p[..., 4:5]).reshape(b, na * h * w, -1))
    return torch.cat(boxes, 1), torch.cat(scores, 1)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _reshape_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Recreate convs / BNs whose shapes differ in `state` (channel-pruned checkpoints)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Conv2d) and f"{name}.weight" in state:
            w = state[f"{name}.weight"]
            if tuple(w.shape) != tuple(m.weight.shape):
                _set_module(
                    model,
                    name,
                    nn.Conv2d(
                        w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, bias=m.bias is not None
                    ),
                )
        elif isinstance(m, nn.BatchNorm2d) and f"{name}.weight" in state:
            n = state[f"{name}.weight"].shape[0]
            if n != m.num_features:
                _set_module(model, name, nn.BatchNorm2d(n, eps=m.eps, momentum=m.momentum))


def build(cfg: DetectorConfig | dict, state: dict[str, torch.Tensor] | None = None) -> YoloDetector:
    cfg = cfg if isinstance(cfg, DetectorConfig) else DetectorConfig.from_dict(cfg)
    model = YoloDetector(cfg)
    if state is not None:
        _reshape_to(model, state)
        model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(path: str | Path, model: YoloDetector, extra: dict[str, Any] | None = None) -> Path:
    """Plain dict of config + tensors + JSON-able metadata (loads with weights_only=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "meta": extra or {}}, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[YoloDetector, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: detector checkpoint not found")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    for k in ("config", "state_dict"):
        if k not in ck:
            raise ValueError(f"{path}: not a detector checkpoint (missing '{k}')")
    return build(ck["config"], ck["state_dict"]), ck.get("meta", {})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
