"""Official parity: the authors' operator, loaded through our converter, reproduces their outputs."""
import json

import pytest
import torch
from safetensors.torch import load_file

import timm
import timm_stra  # noqa: F401
from timm_stra.convert import convert_official_state_dict
from timm_stra.layers import StRAttention, mask_diversity


@pytest.fixture(scope='module')
def official(parity_dir):
    return load_file(parity_dir / 'official_stra_op_s1.safetensors')


@pytest.fixture()
def operator(official):
    weights = {k[len('weights.'):]: v for k, v in official.items() if k.startswith('weights.')}
    op = StRAttention(512, stride=1, groups=8, kernel_size=3, reduction=4)
    op.load_state_dict(convert_official_state_dict(weights), strict=True)
    return op


def test_eval_output_and_diversity(official, operator):
    operator.eval()
    with torch.no_grad():
        out = operator(official['input'])
        masks = operator.mode.spatial_masks(operator.local(official['input']))
    torch.testing.assert_close(out, official['output_eval'], rtol=0, atol=1e-5)
    torch.testing.assert_close(mask_diversity(masks), official['diversity_eval'], rtol=0, atol=1e-5)


def test_train_output_and_diversity(official, operator):
    operator.train()
    model = torch.nn.Sequential(operator)
    out = model(official['input'])
    torch.testing.assert_close(out.detach(), official['output_train'], rtol=0, atol=1e-5)
    per_sample = timm_stra.diversity_per_sample(model)
    torch.testing.assert_close(per_sample.detach(), official['diversity_train'], rtol=0, atol=1e-5)


def test_whole_model_keys_convert_and_load(parity_dir):
    """Every key of the official ReID model maps onto stra_resnet50_reid (751 IDs), shapes included."""
    shapes = json.loads((parity_dir / 'official_stra_resnet50_reid_keys.json').read_text())
    official = {k: torch.zeros(s) for k, s in shapes.items()}
    converted = convert_official_state_dict({'module.' + k: v for k, v in official.items()})
    model = timm.create_model('stra_resnet50_reid', num_classes=751)
    ours = model.state_dict()
    assert set(converted) == set(ours)
    for key, value in converted.items():
        assert value.shape == ours[key].shape, key
    model.load_state_dict(converted, strict=True)


def test_unknown_key_is_refused():
    with pytest.raises(ValueError, match='no mapping for fc.weight'):
        convert_official_state_dict({'conv1.weight': torch.zeros(1), 'fc.weight': torch.zeros(1)})


def test_the_copy_is_the_projects_reference(parity_dir):
    """tests/data/parity is a copy of ../shared/parity (the project's read-only reference, beside the checkout in CI):
    byte for byte, where the reference is there."""
    from conftest import SHARED_PARITY
    if not SHARED_PARITY.is_dir():
        pytest.skip(f'no reference folder at {SHARED_PARITY} to compare the copy with')
    names = sorted(p.name for p in SHARED_PARITY.iterdir())
    assert sorted(p.name for p in parity_dir.iterdir()) == names
    for name in names:
        assert (parity_dir / name).read_bytes() == (SHARED_PARITY / name).read_bytes(), name
