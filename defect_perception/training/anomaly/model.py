"""Asymmetric teacher-student anomaly model (in the spirit of ATS-Net, METHODS.md section 4).

- Teacher: a frozen ImageNet EfficientNet-Lite trunk (first blocks only; stride 4 and 8 features
  carry the 8-25 px defects of a 256 px DeepPCB frame).
- EMA normalisation: per-channel running mean/variance of the teacher features, frozen after
  stage 1, so every channel and scale weighs the same in the discrepancy.
- Coupling: one Real-NVP block (two alternating affine half-couplings) per scale, trained in
  stage 1 by maximum likelihood on good features. It is bijective, so it cannot collapse, and it
  maps unlikely (defective) features far from the origin: the student, which never saw them,
  cannot follow, which amplifies the discrepancy.
- Student: a small plain conv net trained from scratch on the image (asymmetric: different
  architecture, no pretraining), optionally with a dual-scale context block (local depthwise
  conv + global attention over a coarse token grid) before its deepest head.
- Map: per-scale mean squared discrepancy, divided by its mean on held-out good images,
  upsampled to the input, averaged, Gaussian-blurred, optionally zeroed in a `border` band at the
  image edge (padding makes features there unreliable). Score: max or top-k mean of the map.

`AnomalyNet.forward(x)` is exactly what is exported to ONNX: input [N,1,H,W] normalised
((pixel/255 - 0.5) / 0.5), outputs map [N,1,H,W] and score [N].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from defect_perception.training.anomaly.config import AnomalyConfig


class Teacher(nn.Module):
    """Frozen EfficientNet-Lite stem + blocks[: max(blocks) + 1]; returns the listed blocks."""

    def __init__(self, variant: str, pretrained: bool, blocks: list[int]):
        super().__init__()
        from defect_perception.training.pretrained import efficientnet_lite

        full = efficientnet_lite(variant, pretrained=pretrained)
        self.stem = nn.Sequential(full.conv_stem, full.bn1)
        self.blocks = nn.Sequential(*list(full.blocks)[: max(blocks) + 1])
        self.out_blocks = sorted(blocks)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            feats = self(torch.zeros(1, 1, 64, 64))
        self.channels = [f.shape[1] for f in feats]
        self.strides = [64 // f.shape[-1] for f in feats]

    def train(self, mode: bool = True):  # always frozen, BN in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x.repeat(1, 3, 1, 1))
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.out_blocks:
                out.append(x)
        return out


class EMANorm(nn.Module):
    """Per-channel (x - mean) / std with statistics tracked as an exponential moving average
    while `update` is on (stage 1), then frozen buffers (exported as constants)."""

    def __init__(self, channels: int, momentum: float = 0.01, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.update = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.update:
            with torch.no_grad():
                m = x.mean(dim=(0, 2, 3))
                v = x.var(dim=(0, 2, 3))
                a = 1.0 if int(self.seen) == 0 else self.momentum
                self.mean.lerp_(m, a)
                self.var.lerp_(v, a)
                self.seen += 1
        return (x - self.mean[None, :, None, None]) / torch.sqrt(self.var[None, :, None, None] + self.eps)


class _HalfCoupling(nn.Module):
    def __init__(self, channels: int, hidden: int, clamp: float, flip: bool):
        super().__init__()
        self.ca = channels // 2 if not flip else channels - channels // 2
        self.cb = channels - self.ca
        self.flip, self.clamp = flip, clamp
        self.net = nn.Sequential(nn.Conv2d(self.ca, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, 2 * self.cb, 1))
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        if self.flip:
            b, a = x[:, : c - self.ca], x[:, c - self.ca:]
        else:
            a, b = x[:, : self.ca], x[:, self.ca:]
        s, t = self.net(a).chunk(2, dim=1)
        s = self.clamp * torch.tanh(s / self.clamp)
        b = b * torch.exp(s) + t
        y = torch.cat([b, a], 1) if self.flip else torch.cat([a, b], 1)
        return y, s.sum(1)


class Coupling(nn.Module):
    """One Real-NVP block: two affine half-couplings with swapped halves. Returns (y, log|det|)
    per pixel; `nll` is the Gaussian negative log-likelihood used in stage 1."""

    def __init__(self, channels: int, hidden: int = 64, clamp: float = 2.0):
        super().__init__()
        self.c1 = _HalfCoupling(channels, hidden, clamp, flip=False)
        self.c2 = _HalfCoupling(channels, hidden, clamp, flip=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow(x)[0]

    def flow(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, ld1 = self.c1(x)
        y, ld2 = self.c2(y)
        return y, ld1 + ld2

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        y, logdet = self.flow(x)
        return (0.5 * (y ** 2).sum(1) - logdet).mean() / x.shape[1]


class ContextBlock(nn.Module):
    """Dual-scale context: a local depthwise 3x3 branch plus multi-head self-attention over a
    `grid` x `grid` pooled token map (global context), added back residually."""

    def __init__(self, channels: int, grid: int = 8, heads: int = 4):
        super().__init__()
        self.grid, self.heads = grid, heads
        self.local = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                   nn.Conv2d(channels, channels, 1))
        self.norm = nn.BatchNorm2d(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        k = max(1, int(h) // self.grid)
        g = F.avg_pool2d(self.norm(x), kernel_size=k, stride=k)
        gh, gw = g.shape[2], g.shape[3]
        d = c // self.heads
        q, kk, v = self.qkv(g).reshape(-1, 3, self.heads, d, gh * gw).unbind(1)
        attn = torch.softmax(q.transpose(-1, -2) @ kk / math.sqrt(d), dim=-1)   # [N, h, T, T]
        out = (v @ attn.transpose(-1, -2)).reshape(-1, c, gh, gw)
        out = F.interpolate(self.proj(out), size=(int(h), int(w)), mode="bilinear", align_corners=False)
        return x + self.local(x) + out


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Student(nn.Module):
    """Plain ResNet-style conv net from the gray image to the teacher's scales."""

    def __init__(self, out_channels: list[int], strides: list[int], width: int = 32,
                 context: bool = False, grid: int = 8):
        super().__init__()
        if strides[0] < 4 or any(b != 2 * a for a, b in zip(strides, strides[1:], strict=False)):
            raise ValueError(f"student supports strides 4, 8, 16, ... doubling; teacher gave {strides}")
        ch = 2 * width
        self.stem = nn.Sequential(_conv_bn(1, width, 2), _conv_bn(width, ch, 2))
        pre = [ _Res(ch) for _ in range(int(math.log2(strides[0])) - 2)]  # extra downsampling if needed
        self.stages, self.heads = nn.ModuleList(), nn.ModuleList()
        for i, oc in enumerate(out_channels):
            if i == 0:
                layers = [*pre, _Res(ch), _Res(ch)]
            else:
                layers = [_conv_bn(ch, 2 * ch, 2), _Res(2 * ch), _Res(2 * ch)]
                ch *= 2
            if context and i == len(out_channels) - 1:
                layers.append(ContextBlock(ch, grid))
            self.stages.append(nn.Sequential(*layers))
            self.heads.append(nn.Sequential(_conv_bn(ch, ch), nn.Conv2d(ch, oc, 1)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage, head in zip(self.stages, self.heads, strict=False):
            x = stage(x)
            out.append(head(x))
        return out


def gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    xs = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(xs ** 2) / (2 * sigma ** 2))
    return k / k.sum()


class AnomalyNet(nn.Module):
    def __init__(self, cfg: AnomalyConfig):
        super().__init__()
        self.cfg = cfg
        self.teacher = Teacher(cfg.teacher, cfg.pretrained, cfg.blocks)
        chans = self.teacher.channels
        self.norms = nn.ModuleList(EMANorm(c, cfg.ema_momentum) if cfg.ema_norm else nn.Identity()
                                   for c in chans)
        self.couplings = nn.ModuleList(Coupling(c, cfg.coupling_hidden, cfg.coupling_clamp) if cfg.coupling
                                       else nn.Identity() for c in chans)
        self.student = Student(chans, self.teacher.strides, cfg.student_width, cfg.context, cfg.context_grid)
        self.register_buffer("scale_norm", torch.ones(len(chans)))
        self.set_postprocess(cfg)

    # buffers derived from the config, not learned: rebuilt when the scoring options change
    POSTPROCESS_BUFFERS = ("blur", "border_mask")

    def set_postprocess(self, cfg: AnomalyConfig) -> None:
        """(Re)build blur kernel, border mask and top-k from the config's scoring options."""
        self.cfg = cfg
        k = gaussian_kernel(cfg.blur_sigma) if cfg.blur_sigma > 0 else torch.ones(1)
        self.register_buffer("blur", k)
        mask = torch.ones(1, 1, cfg.size, cfg.size)
        if cfg.border > 0:
            b = cfg.border
            mask[..., :b, :] = 0
            mask[..., -b:, :] = 0
            mask[..., :, :b] = 0
            mask[..., :, -b:] = 0
        self.register_buffer("border_mask", mask)
        n = cfg.size * cfg.size
        self.topk = max(1, int(round(cfg.topk_fraction * n))) if cfg.score == "topk" else 1

    def set_ema_update(self, on: bool) -> None:
        for m in self.norms:
            if isinstance(m, EMANorm):
                m.update = on

    def targets(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Teacher features -> regression targets (normalised, coupled)."""
        return [c(n(f)) for f, n, c in zip(feats, self.norms, self.couplings, strict=False)]

    def scale_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale discrepancy [N,1,h_i,w_i], before scale normalisation."""
        with torch.no_grad():
            t = self.targets(self.teacher(x))
        s = self.student(x)
        return [((a - b) ** 2).mean(1, keepdim=True) for a, b in zip(t, s, strict=False)]

    def combine(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        up = [F.interpolate(m / self.scale_norm[i], size=size, mode="bilinear", align_corners=False)
              for i, m in enumerate(maps)]
        amap = torch.stack(up, 0).mean(0)
        if self.blur.numel() > 1:
            r = self.blur.numel() // 2
            kx = self.blur.view(1, 1, 1, -1)
            ky = self.blur.view(1, 1, -1, 1)
            amap = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="replicate"), kx)
            amap = F.conv2d(F.pad(amap, (0, 0, r, r), mode="replicate"), ky)
        if self.cfg.border > 0:
            amap = amap * self.border_mask
        return amap

    def image_score(self, amap: torch.Tensor) -> torch.Tensor:
        flat = amap.flatten(1)
        if self.topk <= 1:
            return flat.max(1).values
        return flat.topk(self.topk, dim=1).values.mean(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.combine(self.scale_maps(x), (int(x.shape[2]), int(x.shape[3])))
        return amap, self.image_score(amap)
