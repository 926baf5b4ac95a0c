"""Export for deployment, each run against the eager model: ONNX through timm's own ``onnx_export`` (the
TorchScript exporter, as timm's ``onnx_export.py`` uses by default) and ``torch.export`` (where ONNX's dynamo
exporter, AOTInductor and ExecuTorch start)."""
import onnx
import onnx.reference
import pytest
import timm
import torch
from timm.utils.onnx import onnx_export

import timm_stra  # noqa: F401  (registers the models)

pytestmark = pytest.mark.slow  # a ResNet-50 export each, 5-10 s

# model, input size exported with, input size run with (another batch too; another image size where the head allows)
ONNX_CASES = [
    ('stra_resnet50_reid', (3, 64, 32), (3, 96, 48)),  # stride-1 last stage
    ('stra_resnet50_fer', (1, 44, 44), (1, 40, 36)),  # small stem, stride-2 operator, odd map sizes
    ('stra_resnet50_face', (3, 112, 112), (3, 112, 112)),  # fixed-size head
]


@pytest.mark.parametrize('name, export_size, run_size', ONNX_CASES)
def test_onnx_export_through_timm_runs_as_the_eager_model(name, export_size, run_size, tmp_path):
    model = timm.create_model(name).eval()
    path = tmp_path / f'{name}.onnx'
    onnx_export(model, str(path), batch_size=2, input_size=export_size, dynamic_size=run_size != export_size)
    graph = onnx.load(str(path))
    x = torch.randn(3, *run_size)
    out, = onnx.reference.ReferenceEvaluator(graph).run(None, {'input0': x.numpy()})
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(out), expected)


@pytest.mark.parametrize('ablation', [
    {'local_op': 'sasa'}, {'local_op': 'group_conv', 'mode': 'no_interaction'}, {'reference': True},
], ids=str)
def test_onnx_export_of_the_ablation_operators_runs_as_the_eager_model(ablation, tmp_path):
    """The paper's other operators (SASA's masked windows, the unfold reference) export too, at FER's small maps."""
    model = timm.create_model('stra_resnet50_fer', **ablation).eval()
    path = tmp_path / 'ablation.onnx'
    onnx_export(model, str(path), batch_size=2, input_size=(1, 44, 44), dynamic_size=True)
    x = torch.randn(3, 1, 40, 36)
    out, = onnx.reference.ReferenceEvaluator(onnx.load(str(path))).run(None, {'input0': x.numpy()})
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(out), expected)


def test_torch_export_with_a_dynamic_batch_runs_as_the_eager_model():
    size = (3, 64, 32)
    model = timm.create_model('stra_resnet50_reid').eval()
    batch = torch.export.Dim('batch', min=1, max=256)
    program = torch.export.export(model, (torch.randn(2, *size),), dynamic_shapes=({0: batch},))
    x = torch.randn(5, *size)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))
