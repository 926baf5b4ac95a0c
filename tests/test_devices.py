"""The StRA operator and models on every device this machine has (CPU, and CUDA where present).

Each test runs on the CPU everywhere and on the GPU where one is found, against a
float64 CPU oracle: the step-by-step reference operators (``reference=True``) or the
float32 result. TF32 is switched off for the float32 comparisons, so that a
difference is the operator's and not the tensor cores' reduced mantissa.
"""

import os
import tempfile

import pytest
import timm
import torch

import timm_stra
from timm_stra.layers import StRAttention

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _operator(stride=1, **kwargs) -> StRAttention:
    """A small StRA operator with non-trivial norms (a wrong normalisation would show)."""
    torch.manual_seed(0)
    op = StRAttention(32, stride=stride, groups=4, **kwargs)
    for bn in (m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return op


def _step(op, x, grad):
    """Output, input gradient and parameter gradients of one forward and backward."""
    op.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = op(x)
    out.backward(grad.to(out.dtype))
    return out.detach(), x.grad, [p.grad for p in op.parameters()]


def _oracle(stride, x, grad):
    """The reference operators in float64 on the CPU, with the weights of ``_operator(stride)``."""
    ref = StRAttention(32, stride=stride, groups=4, reference=True).double()
    ref.load_state_dict(_operator(stride).state_dict())
    return _step(ref, x.double().cpu(), grad.double().cpu())


def _cpu64(step):
    """A ``_step`` result in float64 on the CPU, to compare against."""
    out, grad_x, grads = step
    return out.double().cpu(), grad_x.double().cpu(), [g.double().cpu() for g in grads]


def _assert_close(got, want, rtol, atol):
    """Output and gradients close, each to ``atol`` times its own largest entry (or 1, if that is below 1)."""
    pairs = [(got[0], want[0]), (got[1], want[1]), *zip(got[2], want[2])]
    assert len(got[2]) == len(want[2])
    for i, (a, b) in enumerate(pairs):
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a.double().cpu(), b, rtol=rtol, atol=atol * scale, msg=lambda m: f'#{i}: {m}')


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('recompute', [True, False])
def test_float32_matches_the_float64_reference(device, stride, recompute):
    x = torch.randn(3, 32, 7, 6)
    op = _operator(stride, recompute=recompute).to(device)
    grad = torch.randn_like(op(x.to(device))).cpu()
    got = _step(op, x.to(device), grad.to(device))
    # atol: gradients that are zero in exact arithmetic (BN biases before a softmax) are rounding noise
    _assert_close(got, _oracle(stride, x, grad), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('stride', [1, 2])
def test_channels_last_gives_what_contiguous_gives(device, stride):
    x = torch.randn(3, 32, 7, 6, device=device)
    op = _operator(stride).to(device)
    grad = torch.randn_like(op(x))
    want = _step(op, x, grad)
    got = _step(op.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last), grad)
    _assert_close(got, _cpu64(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', HALF)
@pytest.mark.parametrize('stride', [1, 2])
def test_half_autocast_is_finite_and_near_float64(device, dtype, stride):
    """Under bf16/fp16 autocast: finite values and gradients (float32 softmax statistics), near the oracle
    to the half type's precision; recomputing in backward gives what keeping gives."""
    x = torch.randn(3, 32, 7, 6)
    grad = torch.randn(3, 32, 7 // stride + 7 % stride, 6 // stride) * 0.1
    steps = []
    for recompute in (True, False):
        op = _operator(stride, recompute=recompute).to(device)
        with torch.autocast(device, dtype=dtype):
            steps.append(_step(op, x.to(device), grad.to(device)))
    got = steps[0]
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    for t in (got[0], got[1], *got[2]):
        assert torch.isfinite(t).all()
    _assert_close(got, _oracle(stride, x, grad), rtol=5e-2, atol=5e-2)
    # same kernels, same order: recomputing reproduces what was kept
    _assert_close(got, _cpu64(steps[1]), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('device', DEVICES)
def test_model_training_step_channels_last_bf16(device):
    """A whole StRA model (the FER variant: small input) trains on the device in channels_last and bf16 autocast:
    finite loss, diversity term and gradients, every parameter reached."""
    model = timm.create_model('stra_resnet50_fer', num_classes=7).to(device).to(memory_format=torch.channels_last)
    model.train()
    x = torch.randn(4, 1, 44, 44, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.tensor([0, 3, 6, 2], device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        logits = model(x)
        diversity = timm_stra.diversity_loss(model)
        loss = torch.nn.functional.cross_entropy(logits.float(), target) + diversity
    loss.backward()
    assert logits.shape == (4, 7) and torch.isfinite(loss) and torch.isfinite(diversity)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize('device', DEVICES)
def test_model_eval_matches_the_float64_reference(device):
    """The StRA ReID model's embedding on the device (float32, eval) equals the float64 CPU model built from the
    reference operators. ``zero_init_last=False``: with the last norms of the blocks at zero the StRA operators
    would not reach the output."""
    model = timm.create_model('stra_resnet50_reid', zero_init_last=False).eval()
    reference = timm.create_model('stra_resnet50_reid', zero_init_last=False, reference=True).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        want = reference.double()(x.double())
        got = model.to(device)(x.to(device)).cpu().double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('device', DEVICES)
def test_inductor_compile_matches_eager(device):
    """``torch.compile`` (inductor: C++ on CPU, Triton on CUDA) of the operator: same values and gradients."""
    if device == 'cpu':
        _skip_unless_inductor_builds_cpp()
    op = _operator(2).to(device)
    x = torch.randn(3, 32, 7, 6, device=device)
    grad = torch.randn(3, 32, 4, 3, device=device)
    want = _step(op, x, grad)
    got = _step(torch.compile(op), x, grad)
    _assert_close(got, _cpu64(want), rtol=1e-4, atol=1e-4)


def _skip_unless_inductor_builds_cpp():
    """Skip, saying why, where torch inductor cannot build its C++ kernels: no C++ compiler, or whitespace in a
    path it hands the compiler, which it does not quote ("input file '/tmp/a' is the same as output file")."""
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler as e:
        pytest.skip(f'torch inductor compiles C++ on the CPU: {e} (install g++ or set CXX)')
    paths = {'the temporary folder (TMPDIR)': tempfile.gettempdir(), 'its cache (TORCHINDUCTOR_CACHE_DIR)': cache_dir(),
             "torch's headers": os.path.dirname(torch.__file__)}
    spaced = [f'{what}: {path!r}' for what, path in paths.items() if any(c.isspace() for c in path)]
    if spaced:
        pytest.skip(f"torch inductor's C++ build cannot take a path with whitespace, as {'; '.join(spaced)}")


@pytest.fixture
def triton_calls(monkeypatch):
    """A list that gets an entry for every call of the Triton inference (``stra_inference``) in the test."""
    pytest.importorskip('triton')
    from timm_stra.layers import stra_attn
    calls = []
    kernels = stra_attn.stra_inference
    monkeypatch.setattr(stra_attn, 'stra_inference', lambda *args: calls.append(1) or kernels(*args))
    return calls


def _eval_operator(stride, **kwargs):
    """``_operator`` in eval mode with random running statistics (an identity-like norm would hide a wrong one)."""
    op = _operator(stride, **kwargs)
    for bn in (m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2)
    return op.eval()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='the Triton kernels run on CUDA (the interpreter test '
                    'in test_stra_triton.py checks them on the CPU)')
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('precision', ['float32', 'bf16-autocast', 'float16-model'])
def test_triton_operator_on_cuda_matches_the_pytorch_path(stride, precision, triton_calls):
    """``StRAttention.use_triton`` on CUDA: the compiled kernels run (counted) and give the PyTorch path's values in
    float32 (contiguous; TF32 off), under bf16 autocast (channels_last) and for a float16 model, in
    ``inference_mode``; a map of more positions than one program's block."""
    op = _eval_operator(stride).cuda()
    x = torch.randn(4, 32, 13, 9, device='cuda')
    if precision == 'float16-model':
        op, x = op.half(), x.half()
    elif precision == 'bf16-autocast':
        op, x = op.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16, enabled=precision == 'bf16-autocast'):
        want = op(x)
        op.use_triton = True
        got = op(x)
    assert triton_calls == [1]
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = 1e-4 if precision == 'float32' else 3e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                    reason='TF32 needs an NVIDIA GPU of compute capability 8 or more')
def test_triton_float32_products_on_cuda_follow_pytorchs_tf32_settings(monkeypatch):
    """With TF32 allowed for convolutions (PyTorch's default) or for matmuls, the kernels take the logit branch's and
    values' products, or the mask branch's, in TF32 as the PyTorch path's kernels do: each setting changes the
    kernels' output, and each output is within TF32's error of the PyTorch path's."""
    pytest.importorskip('triton')
    op = _eval_operator(1).cuda()
    x = torch.randn(4, 32, 13, 9, device='cuda')
    outputs = {}
    for conv, matmul in [(False, False), (True, False), (False, True)]:
        monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', conv)
        monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', matmul)
        with torch.inference_mode():
            op.use_triton = False
            want = op(x)
            op.use_triton = True
            outputs[conv, matmul] = got = op(x)
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
    ieee = outputs[False, False]
    assert not torch.equal(outputs[True, False], ieee) and not torch.equal(outputs[False, True], ieee)
    assert not torch.equal(outputs[True, False], outputs[False, True])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA only')
def test_triton_model_on_cuda_matches_the_pytorch_path(triton_calls):
    """A whole StRA model with ``set_triton``: every operator takes the kernels in eval mode, none in training."""
    torch.manual_seed(0)
    model = timm.create_model('stra_resnet50_reid', num_classes=10).cuda()
    x = torch.randn(2, 3, 128, 64, device='cuda')
    for m in model.modules():  # running statistics away from the initial identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    with torch.no_grad():
        want = model(x)
        assert timm_stra.set_triton(model) == 3
        got = model(x)
    assert len(triton_calls) == 3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    model.train()(x).sum().backward()  # training takes the PyTorch path
    assert len(triton_calls) == 3
    model.eval().set_triton(False)  # the model's own switch
    with torch.no_grad():
        model(x)
    assert len(triton_calls) == 3
