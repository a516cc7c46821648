"""KD loss properties a reviewer would check against the papers' formulas."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from defect_perception.training.classification import losses
from defect_perception.training.classification.models import tree_levels
from defect_perception.training.deeppcb import CATEGORY_TREE

CLASSES = ["normal", "open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]


def test_simkd_loss_zero_iff_projected_features_match():
    t = torch.rand(4, 16, 3, 3)
    s = t.clone().requires_grad_(True)
    loss = losses.get("simkd")({"features": s, "t_features": t}, {})[0]
    assert float(loss.detach()) == 0.0
    s2 = (t + 0.1 * torch.randn_like(t)).requires_grad_(True)
    loss2 = losses.simkd_term(s2, t)
    loss2.backward()
    assert float(loss2.detach()) > 0 and s2.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="do not match teacher features"):
        losses.simkd_term(torch.zeros(1, 8, 3, 3), t)


def test_hinton_term_is_t_squared_times_soft_kl():
    torch.manual_seed(0)
    s, t = torch.randn(8, 7), torch.randn(8, 7)
    for temp in (1.0, 2.0, 4.0):
        pt = F.softmax(t / temp, 1)
        kl = (pt * (pt.log() - F.log_softmax(s / temp, 1))).sum(1).mean()
        assert losses.hinton_term(s, t, temp) == pytest.approx(float(kl) * temp ** 2, rel=1e-5)


def test_hinton_t_squared_keeps_gradient_scale():
    """Without T^2 the soft-target gradient shrinks ~1/T^2; with it, it stays comparable."""
    torch.manual_seed(1)
    t = torch.randn(16, 7)
    norms, raw = {}, {}
    for temp in (4.0, 8.0):
        s = torch.randn(16, 7, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        losses.hinton_term(s, t, temp).backward()
        norms[temp] = float(s.grad.norm())
        raw[temp] = norms[temp] / temp ** 2
    assert raw[4.0] / raw[8.0] > 3.0                     # raw KL gradient: ~4x smaller at 2x T
    assert 0.6 < norms[4.0] / norms[8.0] < 1.7           # T^2-scaled: same order


def test_hinton_mixes_ce_with_lambda():
    s, t, y = torch.randn(4, 7), torch.randn(4, 7), torch.tensor([0, 1, 2, 3])
    only_ce = losses.get("hinton", temperature=2.0, lam=0.0)({"logits": s, "t_logits": t}, {"labels": y})[0]
    assert float(only_ce) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-6)


def test_labelfree_needs_no_labels_and_is_stationary_at_teacher():
    t = torch.randn(5, 7)
    s = t.clone().requires_grad_(True)
    loss, _ = losses.get("labelfree", alpha=1.0, beta=1.0)({"logits": s, "t_logits": t}, {})
    loss.backward()
    assert s.grad.abs().max() < 1e-6                   # MSE and BCE(sigmoid) both minimal at z_s = z_t
    s2 = (t + 1.0).requires_grad_(True)
    loss2 = losses.labelfree_term(s2, t, 1.0, 1.0)
    assert float(loss2.detach()) > float(loss.detach())


def test_unknown_method_suggests():
    with pytest.raises(ValueError, match="did you mean 'hinton'"):
        losses.get("hintn")


def _logits(idx: int, n: int, big: float = 6.0) -> torch.Tensor:
    z = torch.zeros(1, n)
    z[0, idx] = big
    return z


def test_dependency_loss_positive_exactly_when_inconsistent():
    # parent level: [normal, missing_copper, extra_copper]; children: the 7 classes
    levels = tree_levels(CLASSES, CATEGORY_TREE)
    assert levels[0] == ["normal"] + ["defect"] * 6
    parent_labels = sorted(set(levels[1]), key=levels[1].index)
    parent_of = torch.tensor([parent_labels.index(p) for p in levels[1]])
    for child in range(7):
        for parent in range(3):
            c = _logits(child, 7).requires_grad_(True)
            p = _logits(parent, 3).requires_grad_(True)
            d = losses.dependency_loss(c, p, parent_of).sum()
            consistent = int(parent_of[child]) == parent
            if consistent:
                assert float(d.detach()) == 0.0
            else:
                assert float(d.detach()) > 0.5
                d.backward()
                assert c.grad.abs().sum() > 0 and p.grad.abs().sum() > 0   # carries gradient both ways


def test_hierarchical_loss_adds_level_terms():
    levels = tree_levels(CLASSES, CATEGORY_TREE)
    h = losses.HierarchicalLoss(losses.get("none"), levels, alpha=1.0, beta=1.0)
    y = torch.tensor([0, 1, 2])
    lv = [torch.randn(3, 2, requires_grad=True), torch.randn(3, 3, requires_grad=True),
          torch.randn(3, 7, requires_grad=True)]
    loss, parts = h({"logits": lv[-1], "levels": lv}, {"labels": y})
    assert {"ce", "ce_l0", "ce_l1", "dep_l1", "dep_l2"} <= set(parts)
    assert h.targets[1][y].tolist() == [0, 1, 2]       # normal, missing_copper (open), extra_copper (short)
    loss.backward()
    assert all(t.grad.abs().sum() > 0 for t in lv)
