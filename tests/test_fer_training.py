"""The FER variant (StRA blocks without the last 1x1 conv) trains: backward through its residual sum works."""
import timm
import torch

import timm_stra


def test_fer_stra_backward():
    model = timm.create_model('stra_resnet50_fer').train()
    loss = model(torch.randn(2, 1, 44, 44)).square().mean() + timm_stra.diversity_loss(model)
    loss.backward()
    assert model.layer4[0].conv2.local.value.weight.grad is not None

