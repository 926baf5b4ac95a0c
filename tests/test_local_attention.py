"""Production local attention against the unfold-based reference, forward and gradients."""
import pytest
import torch

from timm_stra.layers import LocalAttention, LocalAttentionReference, StRAttention


def _pair(dim, groups, kernel_size, stride, dtype=torch.float32):
    fast = LocalAttention(dim, groups, kernel_size, stride).to(dtype)
    ref = LocalAttentionReference(dim, groups, kernel_size, stride).to(dtype)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _perturb_batchnorms(module):
    """Random BN statistics and affine parameters, so eval mode is not an identity."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1.0, 0.3)
            m.bias.data.normal_()


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('kernel_size', [3, 5])
@pytest.mark.parametrize('size', [(7, 5), (8, 6), (1, 1), (2, 3)])
def test_matches_reference_forward_and_backward(stride, kernel_size, size):
    fast, ref = _pair(32, 4, kernel_size, stride)
    _perturb_batchnorms(fast)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 32, *size, dtype=torch.float64).float().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = fast(x), ref(x_ref)
    assert out.shape == (2, 32, (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, p), p_ref in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize('stride', [1, 2])
def test_matches_reference_in_eval_mode(stride):
    fast, ref = _pair(16, 8, 3, stride)
    _perturb_batchnorms(fast)
    ref.load_state_dict(fast.state_dict())
    fast.eval(), ref.eval()
    x = torch.randn(3, 16, 9, 7)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
def test_bfloat16_close_to_reference_and_finite(stride):
    fast, ref = _pair(64, 8, 3, stride)
    fast, ref = fast.bfloat16(), ref.float()
    ref.load_state_dict({k: v.float() for k, v in fast.state_dict().items()})
    x = torch.randn(2, 64, 16, 8)
    out = fast(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref(x), rtol=5e-2, atol=5e-2)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters())


def test_border_neighbours_take_part_in_the_softmax():
    """Outside the map nu and V are zero but the neighbours still weigh in (official behaviour)."""
    op = LocalAttention(8, groups=1, kernel_size=3).eval()
    for p in op.parameters():
        torch.nn.init.zeros_(p)
    torch.nn.init.ones_(op.value.weight[:, :1])  # every value channel copies input channel 0
    x = torch.zeros(1, 8, 3, 3)
    x[:, 0] = 1.0
    out = op(x)[0, 0]
    # all logits are 0 (scores are BN(0) = 0): uniform 1/9 weights over 3x3 windows of ones with zero padding
    expected = torch.tensor([[4., 6., 4.], [6., 9., 6.], [4., 6., 4.]]) / 9
    torch.testing.assert_close(out, expected)


def test_hidden_width_rounds_to_groups():
    assert LocalAttention(24, groups=8, reduction=4).score.conv1.out_channels == 8
    assert LocalAttention(512, groups=8, reduction=4).score.conv1.out_channels == 128


@pytest.mark.parametrize('kwargs, message', [
    (dict(dim=30, groups=8), '30 channels cannot be split into 8 modes'),
    (dict(dim=32, kernel_size=4), 'kernel_size must be odd'),
    (dict(dim=32, stride=3), 'stride must be 1 or 2'),
])
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocalAttention(**kwargs)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('kernel_size', [1, 3, 5])
def test_fast_path_matches_its_torchscript_fallback(stride, kernel_size):
    """The autograd.Function (eager) and the plain ops (TorchScript, torch.compile) agree, gradients too."""
    from timm_stra.layers.local_attend import local_attend, local_attend_autograd
    H, W, G = 5, 4, 3
    out_h, out_w = (H - 1) // stride + 1, (W - 1) // stride + 1
    attn = torch.rand(2, G, kernel_size ** 2, out_h, out_w, requires_grad=True)
    x = torch.randn(2, G * 4, H, W, requires_grad=True)
    weight = torch.randn(G * 6, 4, 1, 1, requires_grad=True)
    fast = local_attend(attn, x, weight, G, kernel_size, stride)
    plain = local_attend_autograd(attn, x, weight, G, kernel_size, stride)
    assert fast.shape == (2, G, out_h, out_w, 6)
    torch.testing.assert_close(fast, plain)
    grad = torch.randn_like(fast)
    torch.testing.assert_close(torch.autograd.grad(fast, (attn, x, weight), grad),
                               torch.autograd.grad(plain, (attn, x, weight), grad))


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('kernel_size', [1, 3, 5])
@pytest.mark.parametrize('size', [(7, 5), (8, 6), (1, 1), (2, 3)])
def test_neighbours_by_slices_are_the_unfolded_neighbours(kernel_size, stride, size):
    """What ONNX's TorchScript exporter records instead of ``unfold``, which it cannot export."""
    from timm_stra.layers.local_attn import neighbours_by_slices
    k, p = kernel_size, kernel_size // 2
    out_h, out_w = (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1
    padded = torch.nn.functional.pad(torch.randn(2, 3, *size), (p, p, p, p))
    unfolded = padded.unfold(2, k, stride).unfold(3, k, stride).permute(0, 1, 4, 5, 2, 3)
    assert torch.equal(neighbours_by_slices(padded, k, stride, out_h, out_w), unfolded)


@pytest.mark.parametrize('stride', [1, 2])
def test_operator_during_onnx_export_matches_eager(stride, monkeypatch):
    """The path ``torch.onnx.export`` takes (``tests/test_export.py`` runs the exported graphs), gradients too."""
    from timm_stra.layers import local_attn
    op = StRAttention(16, stride=stride, groups=4)
    x = torch.randn(2, 16, 7, 6, requires_grad=True)
    out = op(x)
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    calls = []
    slices = local_attn.neighbours_by_slices
    monkeypatch.setattr(local_attn, 'neighbours_by_slices', lambda *args: calls.append(1) or slices(*args))
    exporting = op(x)
    assert calls == [1]  # the export path was taken
    torch.testing.assert_close(exporting, out)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(exporting, (x, *op.parameters()), grad, allow_unused=True),
                               torch.autograd.grad(out, (x, *op.parameters()), grad, allow_unused=True))


def test_scripted_operator_matches_eager():
    from timm_stra.layers import StRAttention
    op = StRAttention(16, stride=2, groups=4).eval()
    x = torch.randn(2, 16, 7, 6)
    torch.testing.assert_close(torch.jit.script(op)(x), op(x))


def test_autocast_bfloat16_forward_and_backward():
    """Under autocast the value projection runs in bf16; backward (outside autocast) follows suit."""
    op = LocalAttention(32, groups=4, stride=2)
    x = torch.randn(2, 32, 7, 6, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = op(x)
    out.float().square().mean().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert op.value.weight.grad.dtype == torch.float32 and torch.isfinite(op.value.weight.grad).all()
    ref = LocalAttentionReference(32, groups=4, stride=2)
    ref.load_state_dict(op.state_dict())
    torch.testing.assert_close(out.float(), ref(x).float(), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('cls', [LocalAttention, LocalAttentionReference])
def test_per_mode_layout_is_the_channels_first_output_permuted(cls, stride):
    op = cls(32, groups=4, stride=stride).eval()
    per_mode_op = cls(32, groups=4, stride=stride, per_mode=True).eval()
    per_mode_op.load_state_dict(op.state_dict())
    x = torch.randn(2, 32, 7, 6)
    out, per_mode = op(x), per_mode_op(x)
    h, w = out.shape[2:]
    assert per_mode.shape == (2, 4, h, w, 8)
    torch.testing.assert_close(per_mode, out.view(2, 4, 8, h, w).permute(0, 1, 3, 4, 2))


@pytest.mark.parametrize('kernel_size', [1, 3])
def test_per_mode_output_is_compact_when_it_will_be_kept_for_backward(kernel_size):
    """With gradients the output is contiguous, a tensor of its own (in-place ops work), so what follows keeps
    exactly its size for backward; without, it may be a view into the row-window products (no copy)."""
    op = LocalAttention(32, groups=4, kernel_size=kernel_size, per_mode=True)
    x = torch.randn(2, 32, 6, 5, requires_grad=True)
    out = op(x)
    assert out.is_contiguous()
    out.mul_(2).sum().backward()  # a view made inside a custom Function could not be modified in place
    with torch.no_grad():
        view = op(x)
    assert view.is_contiguous() == (kernel_size == 1)  # k = 1 drops no windows
    torch.testing.assert_close(view, op(x).detach())


def test_empty_batch():
    op = StRAttention(16, groups=4, stride=2).eval()
    assert op(torch.randn(0, 16, 5, 4)).shape == (0, 16, 3, 2)


def test_row_windows_do_not_mix_samples():
    """A non-finite value in one sample stays in that sample: every query's row window reads its own slab's
    rows and zero padding (the dropped windows that reach into the next slab have zero weights and are
    thrown away)."""
    op = LocalAttention(16, groups=4).eval()
    x = torch.randn(3, 16, 5, 4)
    clean = op(x)
    x[1, :, 0] = float('inf')   # the top row of the middle sample
    x[1, :, -1] = float('nan')  # and its bottom row
    dirty = op(x)
    torch.testing.assert_close(dirty[0], clean[0])
    torch.testing.assert_close(dirty[2], clean[2])


def test_torch_compile_traces_the_plain_ops(graph_recorder):
    """Under ``torch.compile`` the neighbourhood sum is the plain shifted multiply-adds, which the compiler fuses,
    not the row-window autograd.Function; same values and gradients."""
    from timm_stra.layers.local_attend import local_attend
    attn = torch.rand(2, 3, 9, 5, 4, requires_grad=True)
    x = torch.randn(2, 12, 5, 4, requires_grad=True)
    weight = torch.randn(18, 4, 1, 1, requires_grad=True)
    compiled = torch.compile(lambda *args: local_attend(*args, 3, 3, 1), backend=graph_recorder, fullgraph=True)
    got = compiled(attn, x, weight)
    targets = graph_recorder.targets()
    assert targets and not any('autograd_function' in t for t in targets), targets
    want = local_attend(attn, x, weight, 3, 3, 1)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, (attn, x, weight), grad),
                               torch.autograd.grad(want, (attn, x, weight), grad))


def test_compiled_under_autocast_keeps_the_eager_dtype():
    """Compiled under bf16 autocast, local attention sums in the values' dtype and returns bf16 like eager (not the
    float32 the attention weights would promote the plain ops' sum to)."""
    op = LocalAttention(32, groups=4, stride=2)
    x = torch.randn(2, 32, 7, 6, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        want = op(x)
        got = torch.compile(op, backend='aot_eager', fullgraph=True)(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
