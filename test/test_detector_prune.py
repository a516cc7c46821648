"""Sparsity regulariser, channel pruning (torch-pruning) and layer pruning."""

import numpy as np
import pytest
import torch

from defect_perception.training.detector.model import (
    DetectorConfig,
    build,
    count_params,
    load_checkpoint,
    save_checkpoint,
)
from defect_perception.training.detector.prune import (
    add_bn_l1_grad,
    block_scores,
    bn_l1,
    bn_modules,
    channel_prune,
    layer_prune,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build(DetectorConfig(width=0.125, depth=(1, 2, 2, 1), img_size=64))
    with torch.no_grad():  # distinct gammas so the rankings are meaningful
        for bn in bn_modules(m):
            bn.weight.copy_(torch.randn_like(bn.weight))
            bn.running_mean.normal_(0, 0.1)
    return m.eval()


def _out(m, x):
    with torch.no_grad():
        return [o.clone() for o in m.eval()(x)]


def test_sparsity_gradient_is_lambda_sign_gamma(model):
    lam = 0.003
    model.zero_grad(set_to_none=True)
    add_bn_l1_grad(model, lam)
    for bn in bn_modules(model):
        assert torch.equal(bn.weight.grad, lam * torch.sign(bn.weight.detach()))
    # ... which is the gradient of the penalty lam * sum|gamma| by autograd
    model.zero_grad(set_to_none=True)
    (lam * bn_l1(model)).backward()
    auto = [bn.weight.grad.clone() for bn in bn_modules(model)]
    model.zero_grad(set_to_none=True)
    add_bn_l1_grad(model, lam)
    for g, bn in zip(auto, bn_modules(model), strict=True):
        assert torch.allclose(g, bn.weight.grad)
    model.zero_grad(set_to_none=True)


def test_nothing_pruned_gives_identical_outputs(model):
    x = torch.rand(2, 1, 64, 64)
    ref = _out(model, x)
    for pruned in (channel_prune(model, 0.0), layer_prune(model, 0)):
        assert count_params(pruned) == count_params(model)
        for a, b in zip(ref, _out(pruned, x), strict=True):
            assert torch.equal(a, b)


def test_channel_pruning_runs_with_fewer_params_and_rebuilds(model, tmp_path):
    pruned = channel_prune(model, 0.5)
    assert count_params(pruned) < 0.7 * count_params(model)
    x = torch.rand(1, 1, 64, 64)
    outs = _out(pruned, x)
    assert [o.shape for o in outs] == [o.shape for o in _out(model, x)]  # head contract untouched
    # config + state_dict (no pickle) rebuilds the same network
    save_checkpoint(tmp_path / "p.pt", pruned)
    again, _ = load_checkpoint(tmp_path / "p.pt")
    for a, b in zip(outs, _out(again, x), strict=True):
        assert torch.equal(a, b)


def test_layer_pruning_drops_lowest_gamma_blocks(model, tmp_path):
    scores = block_scores(model)
    pruned = layer_prune(model, 2)
    dropped = pruned.cfg.removed_blocks
    assert len(dropped) == 2 and count_params(pruned) < count_params(model)
    kept = [s for n, s in scores.items() if n not in dropped]
    # a dropped block is among the lowest unless it had to stay as its stage's last one
    assert min(scores[d] for d in dropped) <= min(kept)
    x = torch.rand(1, 1, 64, 64)
    save_checkpoint(tmp_path / "l.pt", pruned)
    again, _ = load_checkpoint(tmp_path / "l.pt")
    for a, b in zip(_out(pruned, x), _out(again, x), strict=True):
        assert torch.equal(a, b)
    assert np.isfinite(_out(again, x)[0].numpy()).all()
    with pytest.raises(ValueError, match="blocks"):
        layer_prune(model, 99)
