"""The FER variant's StRA blocks (no last 1x1 conv) must train: backward through the residual sum."""
import pytest
import timm
import torch

import timm_stra  # noqa: F401
from synthetic import one_thread_fixture

one_thread = pytest.fixture(autouse=True)(one_thread_fixture)


def test_fer_model_backward():
    model = timm.create_model('stra_resnet50_fer', layers=(1, 1, 1, 1)).train()
    x = torch.randn(2, 1, 24, 24)
    loss = model(x).sum() + timm_stra.diversity_loss(model)
    loss.backward()  # failed with an in-place modification error before the out-of-place residual sum
    assert all(p.grad is not None for p in model.layer4.parameters())
