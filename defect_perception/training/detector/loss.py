"""Detection loss: anchor assignment (shape ratio < anchor_t, centre cell + two
neighbours), CIoU box loss, BCE objectness (target = IoU) and BCE class loss; plus the
knowledge-distillation terms used to fine-tune pruned students.

KD (Chen et al., "Learning Efficient Object Detection Models with Knowledge Distillation",
NeurIPS 2017), adapted to a sigmoid one-stage head:
  objectness/class: L = mu * L_hard + (1 - mu) * T^2 * BCE(sigma(z_s / T), sigma(z_t / T))
  box: CIoU to the labels + nu * L_b, where the teacher-bounded L2 term
  L_b = ||b_s - y||^2 if ||b_s - y||^2 + m > ||b_t - y||^2 else 0
  (the student is only pushed where it is worse than the teacher by more than margin m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import STRIDES, YoloDetector


def ciou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of boxes [N, 4] given as (cx, cy, w, h)."""
    b1x1, b1x2 = b1[:, 0] - b1[:, 2] / 2, b1[:, 0] + b1[:, 2] / 2
    b1y1, b1y2 = b1[:, 1] - b1[:, 3] / 2, b1[:, 1] + b1[:, 3] / 2
    b2x1, b2x2 = b2[:, 0] - b2[:, 2] / 2, b2[:, 0] + b2[:, 2] / 2
    b2y1, b2y2 = b2[:, 1] - b2[:, 3] / 2, b2[:, 1] + b2[:, 3] / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)
    ).clamp(0)
    w1, h1, w2, h2 = b1[:, 2], b1[:, 3] + eps, b2[:, 2], b2[:, 3] + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = (b2[:, 0] - b1[:, 0]) ** 2 + (b2[:, 1] - b1[:, 1]) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def soft_bce(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * mean KL between Bernoulli(sigma(z_t / T)) and Bernoulli(sigma(z_s / T)): the
    soft-target BCE minus the (constant) teacher entropy, so it is 0 when they agree."""
    q = torch.sigmoid(teacher / T)
    bce = F.binary_cross_entropy_with_logits(student / T, q, reduction="none")
    ent = F.binary_cross_entropy_with_logits(teacher / T, q, reduction="none")
    return T**2 * (bce - ent).mean()


@dataclass
class Assigned:
    b: torch.Tensor
    a: torch.Tensor
    gj: torch.Tensor
    gi: torch.Tensor
    tbox: torch.Tensor  # (x offset in cell, y offset, w, h) in grid units
    tcls: torch.Tensor
    anc: torch.Tensor  # anchor (w, h) in grid units per target


class YoloLoss:
    def __init__(
        self,
        model: YoloDetector,
        box_gain: float = 0.05,
        obj_gain: float = 1.0,
        cls_gain: float = 0.5,
        anchor_t: float = 4.0,
        balance: tuple[float, ...] = (4.0, 1.0, 0.4),
        kd_temperature: float = 2.0,
        kd_mu: float = 0.5,
        kd_nu: float = 0.5,
        kd_margin: float = 0.0,
    ):
        self.na, self.nc = model.na, model.cfg.num_classes
        self.anchors = [model.anchors[i].detach().clone() / s for i, s in enumerate(STRIDES)]
        self.box_gain, self.obj_gain, self.cls_gain = box_gain, obj_gain, cls_gain
        self.anchor_t, self.balance = anchor_t, balance
        self.T, self.mu, self.nu, self.margin = kd_temperature, kd_mu, kd_nu, kd_margin

    def _view(self, raw: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p.view(p.shape[0], self.na, -1, p.shape[2], p.shape[3]).permute(0, 1, 3, 4, 2) for p in raw]

    def assign(self, level: int, shape: tuple[int, int], targets: torch.Tensor) -> Assigned:
        """targets [M, 6] = (img, cls, cx, cy, w, h) in input pixels."""
        h, w = shape
        anc = self.anchors[level].to(targets.device)
        t = targets.clone()
        t[:, 2:6] /= STRIDES[level]
        if len(t) == 0:
            e = torch.zeros(0, dtype=torch.long, device=t.device)
            return Assigned(e, e, e, e, torch.zeros(0, 4), e, torch.zeros(0, 2))
        r = t[None, :, 4:6] / anc[:, None]
        ok = torch.max(r, 1 / r).max(2).values < self.anchor_t
        ai, ti = ok.nonzero(as_tuple=True)
        tt = t[ti]
        gxy = tt[:, 2:4]
        gxi = torch.tensor([w, h], dtype=gxy.dtype, device=gxy.device) - gxy
        jx, jy = ((gxy % 1 < 0.5) & (gxy > 1)).T
        lx, ly = ((gxi % 1 < 0.5) & (gxi > 1)).T
        offs = (
            torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=gxy.dtype, device=gxy.device) * 0.5
        )
        sel = [torch.ones_like(jx), jx, jy, lx, ly]
        a_l, t_l, g_l = [], [], []
        for k, m in enumerate(sel):
            a_l.append(ai[m])
            t_l.append(tt[m])
            g_l.append(gxy[m] - offs[k])
        a, tt, gij = torch.cat(a_l), torch.cat(t_l), torch.cat(g_l).long()
        gi, gj = gij[:, 0].clamp(0, w - 1), gij[:, 1].clamp(0, h - 1)
        tbox = torch.cat([tt[:, 2:4] - torch.stack([gi, gj], 1).to(tt.dtype), tt[:, 4:6]], 1)
        return Assigned(tt[:, 0].long(), a, gj, gi, tbox, tt[:, 1].long(), anc[a])

    @staticmethod
    def _box(ps: torch.Tensor, anc: torch.Tensor) -> torch.Tensor:
        return torch.cat([ps[:, :2].sigmoid() * 2 - 0.5, (ps[:, 2:4].sigmoid() * 2) ** 2 * anc], 1)

    def __call__(
        self, raw: list[torch.Tensor], targets: torch.Tensor, teacher_raw: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        ps_all = self._view(raw)
        pt_all = self._view(teacher_raw) if teacher_raw is not None else None
        dev = raw[0].device
        lbox, lobj, lcls = (torch.zeros((), device=dev) for _ in range(3))
        kobj, kcls, kreg = (torch.zeros((), device=dev) for _ in range(3))
        for i, p in enumerate(ps_all):
            asg = self.assign(i, p.shape[2:4], targets)
            tobj = torch.zeros(p.shape[:4], device=dev)
            n = len(asg.b)
            if n:
                ps = p[asg.b, asg.a, asg.gj, asg.gi]
                pbox = self._box(ps, asg.anc)
                iou = ciou(pbox, asg.tbox)
                lbox = lbox + (1 - iou).mean()
                tobj[asg.b, asg.a, asg.gj, asg.gi] = iou.detach().clamp(0).to(tobj.dtype)
                tc = torch.zeros(n, self.nc, device=dev)
                tc[torch.arange(n), asg.tcls] = 1.0
                lcls = lcls + F.binary_cross_entropy_with_logits(ps[:, 5:], tc)
            lobj = lobj + F.binary_cross_entropy_with_logits(p[..., 4], tobj) * self.balance[i]
            if pt_all is not None:
                pt = pt_all[i].detach()
                kobj = kobj + soft_bce(p[..., 4], pt[..., 4], self.T) * self.balance[i]
                if n:
                    ptn = pt[asg.b, asg.a, asg.gj, asg.gi]
                    kcls = kcls + soft_bce(ps[:, 5:], ptn[:, 5:], self.T)
                    y = torch.cat([asg.tbox[:, :2], asg.tbox[:, 2:] / asg.anc], 1)
                    bs = pbox.clone()
                    bs = torch.cat([bs[:, :2], bs[:, 2:] / asg.anc], 1)
                    bt = self._box(ptn, asg.anc)
                    bt = torch.cat([bt[:, :2], bt[:, 2:] / asg.anc], 1)
                    es, et = ((bs - y) ** 2).sum(1), ((bt - y) ** 2).sum(1)
                    kreg = kreg + (es * (es + self.margin > et).to(es.dtype)).mean()
        bs_ = raw[0].shape[0]
        if pt_all is None:
            total = self.box_gain * lbox + self.obj_gain * lobj + self.cls_gain * lcls
        else:
            mu = self.mu
            total = (
                self.box_gain * (lbox + self.nu * kreg)
                + self.obj_gain * (mu * lobj + (1 - mu) * kobj)
                + self.cls_gain * (mu * lcls + (1 - mu) * kcls)
            )
        parts = {"box": float(lbox.detach()), "obj": float(lobj.detach()), "cls": float(lcls.detach())}
        if pt_all is not None:
            parts.update(
                kd_obj=float(kobj.detach()), kd_cls=float(kcls.detach()), kd_reg=float(kreg.detach())
            )
        return total * bs_, parts
