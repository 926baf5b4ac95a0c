"""``StRAttention.use_triton``: the operator's inference as three Triton kernels, against the PyTorch path.

The kernels run here under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors), in a fresh
process since Triton reads the variable when the kernels are defined; on CUDA,
``tests/test_devices.py`` runs them compiled.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from timm_stra.layers import StRAttention
from timm_stra.layers.stra_triton import INTERPRETING

pytest.importorskip('triton')

CHECK = textwrap.dedent('''
    import torch
    from torch import nn
    from timm_stra.layers import StRAttention
    from timm_stra.layers import stra_attn

    calls = []
    kernels = stra_attn.stra_inference
    stra_attn.stra_inference = lambda *args: calls.append(1) or kernels(*args)


    def operator(dim, **kwargs):
        """An eval-mode operator with every norm's statistics and affine parameters, and the biases, random."""
        op = StRAttention(dim, **kwargs)
        for m in op.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, .3)
                m.running_var.uniform_(.5, 2)
                if m.weight is not None:
                    m.weight.data.normal_(1, .3)
                    m.bias.data.normal_(0, .3)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.data.normal_(0, .1)
        return op.eval()


    def both(op, x):
        """(PyTorch path, kernels) outputs of ``op`` on ``x``, asserting the kernels ran once."""
        with torch.no_grad():
            op.use_triton = False
            want = op(x)
            op.use_triton = True
            calls.clear()
            got = op(x)
        assert calls == [1], 'the kernels did not run'
        return want, got


    def falls_back(op, x, context=None):
        """``op(x)`` with ``use_triton`` set, asserting it took the PyTorch path (no kernel call); its output."""
        op.use_triton = True
        calls.clear()
        with context or torch.no_grad():
            out = op(x)
        assert calls == [], 'the kernels ran'
        return out


    torch.manual_seed(0)
    # (C, G, H, W, stride, k, mode): strides 1 and 2 on odd and even maps, k = 1, 3 and 5, without interaction,
    # more positions than one program's block (11 x 7), a 1x1 map, channels per mode not a power of 2 (6)
    for C, G, H, W, s, k, mode in [(32, 4, 5, 4, 1, 3, 'full'), (32, 4, 7, 6, 2, 3, 'full'),
                                   (32, 4, 5, 4, 1, 3, 'no_interaction'), (24, 4, 6, 5, 2, 5, 'full'),
                                   (16, 2, 11, 7, 1, 1, 'full'), (16, 2, 1, 1, 2, 3, 'full')]:
        op = operator(C, groups=G, stride=s, kernel_size=k, mode=mode)
        x = torch.randn(2, C, H, W)
        want, got = both(op, x)
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        _, got_cl = both(op, x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got_cl, want, rtol=1e-5, atol=1e-5)
        # positions two elements apart (read in place); columns before rows (copied first)
        for layout in (torch.stack([x, x], dim=-1)[..., 0], x.transpose(2, 3).contiguous().transpose(2, 3)):
            _, got_layout = both(op, layout)
            torch.testing.assert_close(got_layout, want, rtol=1e-5, atol=1e-5)

    # more blocks of positions (3, of 11 x 7) than the pooling combines at once and than gate programs per mode
    from timm_stra.layers import stra_triton
    stra_triton.PART_CHUNK, stra_triton.GATE_PROGRAMS = 2, 2
    want, got = both(operator(16, groups=2), torch.randn(2, 16, 11, 7))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    stra_triton.PART_CHUNK, stra_triton.GATE_PROGRAMS = 16, 4

    # a mode whose local output is zero: a zero modal vector, whose interaction row F.normalize's clamp keeps finite
    op = operator(32, groups=4)
    op.local.value.weight.data[8:16] = 0
    want, got = both(op, torch.randn(2, 32, 5, 4))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # a DataParallel replica (as torch.nn.parallel.replicate builds it): parameters as plain attributes
    op = operator(16, groups=2)
    modules = list(op.modules())
    copies = {id(m): m._replicate_for_data_parallel() for m in modules}
    for m in modules:
        replica = copies[id(m)]
        for key, child in m._modules.items():
            setattr(replica, key, copies[id(child)])
        for key, param in m._parameters.items():
            setattr(replica, key, None if param is None else param.detach().clone())
    want, got = both(copies[id(op)], torch.randn(2, 16, 5, 4))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # norms without affine parameters
    op = operator(32, groups=4)
    for m in op.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight, m.bias = None, None
    want, got = both(op, torch.randn(2, 32, 5, 4))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # half types: a bfloat16 model, a float16 model, and a float32 model under (CPU) bfloat16 autocast: the maps
    # between kernels and the output in the compute dtype, as the PyTorch path keeps them
    x = torch.randn(2, 32, 5, 4)
    for dtype, autocast in [(torch.bfloat16, False), (torch.float16, False), (torch.bfloat16, True)]:
        op = operator(32, groups=4)
        inputs = x
        if not autocast:
            op, inputs = op.to(dtype), x.to(dtype)
        with torch.autocast('cpu', dtype=dtype, enabled=autocast):
            want, got = both(op, inputs)
        assert got.dtype == want.dtype == dtype, (got.dtype, want.dtype)
        scale = want.float().abs().max().item()
        torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2 * scale)

    # where the kernels do not apply, the PyTorch path runs
    op = operator(32, groups=4)
    x = torch.randn(2, 32, 5, 4)
    falls_back(op, x, torch.enable_grad())  # parameters that need gradients, gradients on
    falls_back(op.train(), x)  # training mode: batch statistics
    op.eval()
    op.local.score.bn1.train()
    falls_back(op, x)  # one norm deep inside in training mode
    op.eval()
    falls_back(op.double(), x.double())  # float64
    op.float()
    try:
        falls_back(op, x.half())  # an input in another dtype than the weights, outside autocast
    except RuntimeError as e:  # the PyTorch path's error
        assert 'dtype' in str(e) or 'type' in str(e), e
    else:
        raise AssertionError('a float16 input into a float32 operator passed')
    for module in (op.mode.diversity, op.local.score.conv1):  # mode_maps' hook; a pre-hook on a conv
        handle = module.register_forward_hook(lambda *args: None)
        falls_back(op, x)
        handle.remove()
        handle = module.register_forward_pre_hook(lambda *args: None)
        falls_back(op, x)
        handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    falls_back(op, x)
    handle.remove()
    norm = op.mode.gate_norm
    running = norm.running_mean, norm.running_var
    norm.track_running_stats, norm.running_mean, norm.running_var = False, None, None
    falls_back(op, x)  # a norm without running statistics: batch statistics in eval mode too
    norm.track_running_stats, (norm.running_mean, norm.running_var) = True, running
    from torchvision.ops import FrozenBatchNorm2d
    op.local.score.bn1 = FrozenBatchNorm2d(op.local.score.bn1.num_features)
    falls_back(op, x)  # another norm
    op = operator(32, groups=4)
    op.mode.mask.conv2.bias = None
    falls_back(op, x)  # a score branch without a bias
    op = operator(32, groups=4)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        falls_back(op, mode.from_tensor(x))  # fake tensors: shapes only
    op.use_triton = True
    calls.clear()
    with torch.no_grad():
        torch.compile(op, backend='eager')(x)  # dynamo records the PyTorch ops
        torch.jit.trace(op, x, check_trace=False)  # jit tracing would not see a launch (its check reruns eagerly)
    assert calls == []
    # functorch: the PyTorch path, on its plain ops (its autograd.Functions have no vmap rules)
    mapped = torch.func.vmap(lambda t: falls_back(op, t.unsqueeze(0)).squeeze(0))(x)
    op.use_triton = False
    with torch.no_grad():
        torch.testing.assert_close(mapped, op(x), rtol=1e-4, atol=1e-5)
    op.use_triton = True
    with torch.no_grad():
        calls.clear()
        op(x)
    assert calls == [1]
    print('ok')
''')


@pytest.mark.slow
def test_kernels_match_the_pytorch_path_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1')
    result = subprocess.run([sys.executable, '-c', CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stderr[-3000:]


@pytest.mark.skipif(INTERPRETING, reason='under TRITON_INTERPRET=1 the kernels run on the CPU')
def test_use_triton_without_cuda_takes_the_pytorch_path():
    """Without CUDA (and without the interpreter) the flag changes nothing: same values, no error."""
    op = StRAttention(32, groups=4, stride=2).eval()
    x = torch.randn(2, 32, 7, 6)
    with torch.no_grad():
        want = op(x)
        op.use_triton = True
        torch.testing.assert_close(op(x), want, rtol=0, atol=0)


def test_use_triton_survives_torchscript():
    """The flag is an attribute TorchScript keeps; the scripted operator runs the PyTorch path."""
    op = StRAttention(32, groups=4).eval()
    op.use_triton = True
    x = torch.randn(2, 32, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(op)(x), op(x))


def test_fx_feature_extraction_traces_the_pytorch_path():
    """fx (timm's feature extraction) records the PyTorch ops of operators with ``use_triton`` set: the same
    features."""
    import timm
    from timm.models._features_fx import create_feature_extractor

    model = timm.create_model('stra_resnet50_fer').eval()  # registered by importing timm_stra (above)
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        want = model.forward_features(x)
        model.set_triton()
        assert all(op.use_triton for op in model.modules() if isinstance(op, StRAttention))
        extractor = create_feature_extractor(model, return_nodes=['layer4'])
        torch.testing.assert_close(extractor(x)['layer4'], want)
