"""The shipped ImageNet EfficientNet-Lite weights land on every timm tensor."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="training extra not installed")


def test_lite0_weights_map_onto_timm_exactly():
    from defect_perception.training.pretrained import efficientnet_lite, weight_file

    state = torch.load(weight_file("lite0"), map_location="cpu", weights_only=True)
    model = efficientnet_lite("lite0", pretrained=True)  # raises on any missing/unexpected key
    own = model.state_dict()
    real = [k for k in state if not k.endswith("num_batches_tracked")]
    assert len(real) == len([k for k in own if not k.endswith("num_batches_tracked")])
    assert torch.equal(own["conv_stem.weight"], state["_conv_stem.weight"])
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], state["_blocks.15._project_conv.weight"])
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
