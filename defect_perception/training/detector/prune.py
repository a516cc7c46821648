"""Compression: BN-gamma sparsity, global channel pruning (torch-pruning), layer pruning.

- Sparsity (Liu et al., Network Slimming 2017): loss + lambda * sum|gamma|, applied as the
  subgradient lambda * sign(gamma) added to every BN weight gradient after backward.
- Channel pruning: one global ranking of BN gammas (torch-pruning `BNScaleImportance`
  without per-layer normalisation, `global_pruning=True`) at a pruning ratio. The
  dependency graph keeps channels that meet at residual additions and concatenations
  consistent; the detection head convs are never pruned (their outputs are the contract).
- Layer pruning: residual blocks ranked by the mean |gamma| of the conv right before the
  shortcut; the lowest ones are replaced by identity (x + f(x) -> x). torch-pruning does
  not do this, so it is ours.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .model import YoloDetector, build


def bn_modules(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def add_bn_l1_grad(model: nn.Module, lam: float) -> None:
    """Add d(lam * sum|gamma|)/d gamma = lam * sign(gamma) to the BN weight gradients."""
    if lam <= 0:
        return
    for bn in bn_modules(model):
        g = bn.weight
        if g.grad is None:
            g.grad = torch.zeros_like(g)
        g.grad.add_(lam * torch.sign(g.detach()))


def bn_l1(model: nn.Module) -> torch.Tensor:
    """sum |gamma| over all BN layers (the sparsity penalty's value)."""
    return sum(bn.weight.abs().sum() for bn in bn_modules(model))


def all_gammas(model: nn.Module) -> torch.Tensor:
    return torch.cat([bn.weight.detach().abs().flatten() for bn in bn_modules(model)])


def channel_prune(
    model: YoloDetector, ratio: float, max_layer_ratio: float = 0.9, round_to: int | None = None
) -> YoloDetector:
    """Globally prune `ratio` of the prunable channels by |gamma|; returns a rebuilt copy
    (config + state_dict), so what is saved is exactly what was evaluated."""
    import torch_pruning as tp

    model = build(model.cfg, {k: v.clone() for k, v in model.state_dict().items()}).eval()
    size = model.cfg.img_size
    example = torch.zeros(1, model.cfg.in_channels, size, size)
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.BNScaleImportance(normalizer=None),
        global_pruning=True,
        pruning_ratio=ratio,
        max_pruning_ratio=max_layer_ratio,
        ignored_layers=list(model.head),
        round_to=round_to,
    )
    pruner.step()
    return build(model.cfg, model.state_dict())


def block_scores(model: YoloDetector) -> dict[str, float]:
    """Mean |gamma| of the BN after the conv that feeds each residual addition."""
    return {n: float(b.cv2.bn.weight.detach().abs().mean()) for n, b in model.residual_blocks().items()}


def layer_prune(model: YoloDetector, n_blocks: int, keep_one_per_stage: bool = True) -> YoloDetector:
    """Drop the n residual blocks with the lowest mean gamma (identity instead)."""
    scores = block_scores(model)
    ranked = sorted(scores, key=scores.get)
    if n_blocks > len(ranked):
        raise ValueError(f"layer pruning: asked to drop {n_blocks} blocks, model has {len(ranked)}")
    drop: list[str] = []
    for name in ranked:
        if len(drop) == n_blocks:
            break
        parent = name.rsplit(".", 1)[0]
        siblings = [n for n in scores if n.rsplit(".", 1)[0] == parent]
        if keep_one_per_stage and len([n for n in siblings if n not in drop]) <= 1:
            continue
        drop.append(name)
    if len(drop) < n_blocks:
        raise ValueError(
            f"layer pruning: only {len(drop)} of {n_blocks} blocks can go while keeping one per stage"
        )
    cfg = model.cfg.from_dict(model.cfg.to_dict())
    cfg.removed_blocks = sorted(set(cfg.removed_blocks) | set(drop))
    state = {k: v for k, v in model.state_dict().items() if not any(k.startswith(d + ".") for d in drop)}
    return build(cfg, state)
