"""Knowledge-distillation losses, registered by method name.

- `hinton`   (Hinton et al. 2015): lambda * T^2 * KL(p_t^T || p_s^T) + (1 - lambda) * CE(y, p_s).
  The T^2 factor keeps the soft-target gradient size independent of T.
- `simkd`    (Chen et al., CVPR 2022): ||proj(f_s) - f_t||^2 (mean squared error) between the
  projected student feature map and the teacher's; the teacher classifier is reused frozen.
- `labelfree` (label-free logit KD, mixed-type wafer maps): alpha * MSE(z_s, z_t) +
  beta * BCE(sigmoid(z_s), sigmoid(z_t)); never reads a label.
- `none`     plain cross-entropy (student alone / teacher training).
- hierarchical (category tree, hierarchical FMA): sum_i alpha_i * CE_i over levels +
  sum_{i>=2} beta_i * dloss_i. dloss_i = D * P_inconsistent, where D = 1 when the predicted
  child is not a child of the predicted parent (argmax, no gradient) and
  P_inconsistent = 1 - sum_c p_child(c) * p_parent(parent(c)) (differentiable). The
  original dependency term is only the indicator, which carries no gradient; the product
  keeps it zero for consistent predictions and gives a gradient when they are not.
"""
from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import nn

LOSSES: dict[str, type[nn.Module]] = {}


def register(name: str):
    def deco(cls):
        if name in LOSSES:
            raise ValueError(f"KD loss {name!r} registered twice")
        LOSSES[name] = cls
        return cls
    return deco


def get(name: str, **kwargs) -> nn.Module:
    if name not in LOSSES:
        close = difflib.get_close_matches(name, sorted(LOSSES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown KD method {name!r} (available: {', '.join(sorted(LOSSES))}){hint}")
    return LOSSES[name](**kwargs)


def hinton_term(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t^T || p_s^T), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(s_logits / t, dim=1), F.log_softmax(t_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


@register("none")
class CrossEntropy(nn.Module):
    needs_labels = True

    def __init__(self, label_smoothing: float = 0.0, **_):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        ce = F.cross_entropy(out["logits"], batch["labels"], label_smoothing=self.label_smoothing)
        return ce, {"ce": float(ce.detach())}


@register("hinton")
class HintonKD(nn.Module):
    needs_labels = True

    def __init__(self, temperature: float = 4.0, lam: float = 0.9, **_):
        super().__init__()
        if temperature <= 0 or not 0 <= lam <= 1:
            raise ValueError(f"hinton: temperature must be > 0 and lam in [0, 1], got {temperature}, {lam}")
        self.t, self.lam = temperature, lam

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        kd = hinton_term(out["logits"], out["t_logits"], self.t)
        ce = F.cross_entropy(out["logits"], batch["labels"])
        return self.lam * kd + (1 - self.lam) * ce, {"kd": float(kd.detach()), "ce": float(ce.detach())}


def simkd_term(proj_student: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    if proj_student.shape != teacher_feat.shape:
        raise ValueError(f"simkd: projected student features {tuple(proj_student.shape)} do not match "
                         f"teacher features {tuple(teacher_feat.shape)} (input sizes must match)")
    return F.mse_loss(proj_student, teacher_feat)


@register("simkd")
class SimKD(nn.Module):
    needs_labels = False

    def __init__(self, **_):
        super().__init__()

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = simkd_term(out["features"], out["t_features"])
        return loss, {"feat_mse": float(loss.detach())}


def labelfree_term(s_logits: torch.Tensor, t_logits: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    mse = F.mse_loss(s_logits, t_logits)
    bce = F.binary_cross_entropy_with_logits(s_logits, torch.sigmoid(t_logits))
    return alpha * mse + beta * bce


@register("labelfree")
class LabelFree(nn.Module):
    needs_labels = False

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, **_):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = labelfree_term(out["logits"], out["t_logits"], self.alpha, self.beta)
        return loss, {"lf": float(loss.detach())}


# ---------------------------------------------------------------- hierarchy
def dependency_loss(child_logits: torch.Tensor, parent_logits: torch.Tensor,
                    parent_of: torch.Tensor) -> torch.Tensor:
    """Per-sample D * P_inconsistent (see module doc); parent_of[j] = parent index of child j."""
    pc = child_logits.softmax(1)
    pp = parent_logits.softmax(1)
    consistent = (pc * pp[:, parent_of]).sum(1)
    mismatch = (parent_of[pc.argmax(1)] != pp.argmax(1)).to(pc.dtype)
    return mismatch * (1.0 - consistent)


class HierarchicalLoss(nn.Module):
    """Level CEs + dependency terms between consecutive levels; wraps a method's loss on the
    fine level (`base`) and adds the coarse-level terms."""

    def __init__(self, base: nn.Module, levels: list[list[str]], alpha: float = 1.0, beta: float = 1.0):
        super().__init__()
        self.base, self.alpha, self.beta = base, alpha, beta
        labels = [sorted(set(lv), key=lv.index) for lv in levels]
        # class index -> level index, per level
        targets = [[lbl.index(x) for x in lv] for lv, lbl in zip(levels, labels, strict=True)]
        self.register_buffer("targets", torch.tensor(targets, dtype=torch.long), persistent=False)
        parents = []
        for d in range(1, len(levels)):
            pmap = {}
            for c, p in zip(levels[d], levels[d - 1], strict=False):
                pmap[labels[d].index(c)] = labels[d - 1].index(p)
            parents.append(torch.tensor([pmap[j] for j in range(len(labels[d]))], dtype=torch.long))
        self.parents = parents

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        loss, parts = self.base(out, batch)
        level_logits = out["levels"]                      # root first, fine last
        y = batch["labels"]
        for d, lg in enumerate(level_logits[:-1]):
            ce = F.cross_entropy(lg, self.targets[d][y])
            loss = loss + self.alpha * ce
            parts[f"ce_l{d}"] = float(ce.detach())
        for d in range(1, len(level_logits)):
            parents = self.parents[d - 1].to(y.device)
            dl = dependency_loss(level_logits[d], level_logits[d - 1], parents).mean()
            loss = loss + self.beta * dl
            parts[f"dep_l{d}"] = float(dl.detach())
        return loss, parts
