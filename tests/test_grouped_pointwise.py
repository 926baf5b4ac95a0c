"""Grouped 1x1 convolution as batched products: the same numbers as ``F.conv2d``, forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from timm_stra.layers.grouped_pointwise import (GroupedPointwiseConv, grouped_pointwise,
                                                grouped_pointwise_channels_last)


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('channels_last', [False, True])
def test_matches_conv2d_forward_and_backward(bias, channels_last):
    conv = GroupedPointwiseConv(32, 24, groups=4, bias=bias)
    x = torch.randn(3, 32, 5, 7)
    if channels_last:  # the convolution path
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out = conv(x)
    out_ref = F.conv2d(x_ref, conv.weight, conv.bias, groups=4)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    (dx, *dparams) = torch.autograd.grad(out, [x, *conv.parameters()], grad)
    (dx_ref, *dparams_ref) = torch.autograd.grad(out_ref, [x_ref, *conv.parameters()], grad)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-5)
    for d, d_ref in zip(dparams, dparams_ref):
        torch.testing.assert_close(d, d_ref, rtol=1e-4, atol=1e-4)


def test_state_dict_is_a_conv2d_one():
    conv = GroupedPointwiseConv(16, 8, groups=2)
    plain = torch.nn.Conv2d(16, 8, 1, groups=2)
    plain.load_state_dict(conv.state_dict())  # strict
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-5)


def test_channels_last_per_group_layout():
    x, weight = torch.randn(2, 16, 3, 5), torch.randn(8, 4, 1, 1)
    v = grouped_pointwise_channels_last(x, weight, 4)
    expected = F.conv2d(x, weight, groups=4).view(2, 4, 2, 3, 5).permute(0, 1, 3, 4, 2)
    assert v.shape == (2, 4, 3, 5, 2) and v.is_contiguous()
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-5)
    # the convolution path (channels last input) gives the same layout
    v_conv = grouped_pointwise_channels_last(x.to(memory_format=torch.channels_last), weight, 4)
    torch.testing.assert_close(v_conv, expected, rtol=1e-5, atol=1e-5)


def test_autocast_bf16_keeps_the_autocast_dtype_like_conv2d():
    conv = GroupedPointwiseConv(32, 16, groups=4)
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(x)
        out_ref = F.conv2d(x, conv.weight, conv.bias, groups=4)
    assert out.dtype == out_ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), out_ref.float(), rtol=2e-2, atol=2e-2)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *conv.parameters()], grad)
    grads_ref = torch.autograd.grad(out_ref, [x, *conv.parameters()], grad)
    for g, g_ref in zip(grads, grads_ref):  # in the inputs' dtypes, finite, close to conv2d's
        assert g.dtype == g_ref.dtype == torch.float32 and torch.isfinite(g).all()
        torch.testing.assert_close(g, g_ref, rtol=5e-2, atol=5e-2)


def test_scripts():
    conv = GroupedPointwiseConv(16, 8, groups=2)
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(torch.jit.script(conv)(x), conv(x))
    torch.testing.assert_close(torch.jit.script(grouped_pointwise)(x, conv.weight, None, 2),
                               F.conv2d(x, conv.weight, groups=2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('bias', [True, False])
def test_nodes_of_any_layout_match_conv2d_and_grads_keep_the_layout(bias):
    """Per-group nodes read through their strides: a transposed view of positions x channels (as mode attention
    reads the local attention's per-mode channels-last output) gives conv2d's numbers, and the input gradient
    comes back in the input's memory layout."""
    conv = GroupedPointwiseConv(16, 8, groups=4, bias=bias).double()
    B, G, H, W = 2, 4, 3, 5
    channels_last = torch.randn(B, G, H * W, 16 // G, dtype=torch.float64)   # B, G, N, C/G
    nodes = channels_last.transpose(2, 3).requires_grad_()                      # B, G, C/G, N: a view
    x_ref = nodes.detach().reshape(B, 16, H, W).clone().requires_grad_()
    out = conv.forward_nodes(nodes)
    out_ref = F.conv2d(x_ref, conv.weight, conv.bias, groups=4)
    assert out.shape == (B, 8, H * W)
    torch.testing.assert_close(out.view(B, 8, H, W), out_ref)
    grad = torch.randn_like(out_ref)
    (dx, *dparams) = torch.autograd.grad(out, [nodes, *conv.parameters()], grad.view(B, 8, H * W))
    (dx_ref, *dparams_ref) = torch.autograd.grad(out_ref, [x_ref, *conv.parameters()], grad)
    torch.testing.assert_close(dx.reshape(B, 16, H, W), dx_ref)
    assert dx.stride(2) == 1  # like the nodes: channels unit-strided, a transposed view
    for d, d_ref in zip(dparams, dparams_ref):
        torch.testing.assert_close(d, d_ref)


@pytest.mark.parametrize('channels_last', [False, True])
def test_torch_compile_traces_products_on_any_layout(channels_last, graph_recorder):
    """Under ``torch.compile`` the grouped 1x1 conv is batched products on every device and layout, not a
    convolution, with conv2d's values, gradients and, under autocast, dtype."""
    conv = GroupedPointwiseConv(16, 8, groups=4)
    x = torch.randn(2, 16, 5, 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    compiled = torch.compile(conv, backend=graph_recorder, fullgraph=True)
    got = compiled(x)
    names = graph_recorder.targets()
    assert names and not any('conv' in n for n in names), names
    want = F.conv2d(x, conv.weight, conv.bias, groups=4)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, (x, conv.weight, conv.bias), grad),
                               torch.autograd.grad(want, (x, conv.weight, conv.bias), grad))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert compiled(x).dtype == F.conv2d(x, conv.weight, conv.bias, groups=4).dtype == torch.bfloat16


@pytest.mark.parametrize('backend', ['eager', 'aot_eager'])
@pytest.mark.parametrize('input_grad', [False, True])
def test_compiled_chain_under_autocast_takes_autocast_dtype(backend, input_grad):
    """Two grouped products in a row, compiled, in a bf16 autocast region: both compute in bf16 as autocast does
    eagerly (dynamo once ran the second in float32, or raised an error where the input needed no gradient), and
    the result is conv2d's."""
    chain = torch.nn.Sequential(GroupedPointwiseConv(16, 12, groups=4), GroupedPointwiseConv(12, 8, groups=4))
    x = torch.randn(2, 16, 5, 3, requires_grad=input_grad)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = torch.compile(chain, backend=backend, fullgraph=True)(x)
        first = F.conv2d(x, chain[0].weight, chain[0].bias, groups=4)
        want = F.conv2d(first, chain[1].weight, chain[1].bias, groups=4)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)
