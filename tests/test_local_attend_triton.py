"""The Triton neighbourhood sum (experimental) against the plain-ops local attention.

The kernel runs here under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors), in a
fresh process since the variable is read when the kernel is defined; on CUDA,
``tests/test_devices.py`` runs it compiled.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from timm_stra.layers import LocalAttention

pytest.importorskip('triton')

CHECK = textwrap.dedent('''
    import torch
    from timm_stra.layers.grouped_pointwise import grouped_pointwise_channels_last
    from timm_stra.layers.local_attend import local_attend_autograd
    from timm_stra.layers.local_attend_triton import neighbourhood_sum
    torch.manual_seed(0)
    # (H, W, G, C / G, n, k, s): odd and even maps, strides 1 and 2, k = 1, 3, 5, n not a power of 2,
    # a 1x1 map, more queries than one program's block
    for H, W, G, cg, n, k, s in [(5, 4, 3, 4, 6, 3, 1), (7, 6, 2, 4, 8, 3, 2), (5, 4, 3, 4, 6, 1, 1),
                                 (6, 5, 2, 3, 5, 5, 2), (1, 1, 2, 2, 3, 3, 2), (9, 8, 1, 2, 4, 3, 1),
                                 (16, 8, 2, 8, 64, 3, 1)]:  # the last: StRA's channels per mode at ReID maps
        x, weight = torch.randn(2, G * cg, H, W), torch.randn(G * n, cg, 1, 1)
        attn = torch.rand(2, G, k * k, -(-H // s), -(-W // s))
        want = local_attend_autograd(attn, x, weight, G, k, s)
        value = grouped_pointwise_channels_last(x, weight, G)
        got = neighbourhood_sum(value, attn, k, s)
        assert got.shape == want.shape and got.is_contiguous(), (got.shape, want.shape)
        torch.testing.assert_close(got, want)
        # bf16 inputs, summed in float32: within a few bf16 roundings of the output's scale
        atol = 1e-2 * want.abs().max().item()
        half = neighbourhood_sum(value.bfloat16(), attn.bfloat16(), k, s)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), want, rtol=2e-2, atol=atol)
        mixed = neighbourhood_sum(value.bfloat16(), attn, k, s)  # float32 weights, bf16 values (autocast)
        assert mixed.dtype == torch.bfloat16
        torch.testing.assert_close(mixed.float(), want, rtol=2e-2, atol=atol)
    try:
        neighbourhood_sum(value, attn[:, :, :1], 3, 1)
    except ValueError as e:
        assert 'do not fit' in str(e)
    else:
        raise AssertionError('a mismatched attention shape passed')
    print('ok')
''')


@pytest.mark.slow
def test_kernel_matches_the_plain_ops_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1')
    result = subprocess.run([sys.executable, '-c', CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stderr[-3000:]


def test_use_triton_without_cuda_takes_the_pytorch_path():
    """The flag asks for the kernel where it applies (CUDA inference); elsewhere the values are the usual ones."""
    op = LocalAttention(32, groups=4, stride=2).eval()
    x = torch.randn(2, 32, 7, 6)
    with torch.no_grad():
        want = op(x)
        op.use_triton = True
        torch.testing.assert_close(op(x), want)
