"""Local attention's neighbourhood sum as one Triton kernel (inference; experimental).

``out[b, g, i, j, :] = sum_(dy, dx) attn[b, g, dy * k + dx, i, j] * value[b, g, s*i + dy - p, s*j + dx - p, :]``
with values outside the map taken as zero, for the projected values laid out channels
last within each mode. Each program sums the k*k neighbours of a block of queries of
one (sample, mode), all channels at once, in float32, and writes the output once: one
kernel where the row-window path (``local_attend.py``) runs a zeroed row buffer, a
band of weights and a batched product. Only the forward exists: ``local_attend`` uses
it when nothing needs a gradient, on CUDA, for float32 and half types, not under TorchScript
or jit tracing, and only when asked (``LocalAttention.use_triton``). Same values up to rounding (another
summation order). ``TRITON_INTERPRET=1`` runs it on the CPU (the tests do); on an H200 it
compiled, matched the row-window path and took 0.95x its time in the last stage's inference
(``benchmarks/results/h200-2026-11-26``): too little to be the default.
"""
import contextlib

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch on Linux; elsewhere the PyTorch path serves
    triton = None

HAS_TRITON = triton is not None

if HAS_TRITON:
    @triton.jit
    def _neighbourhood_sum_kernel(
            value_ptr, attn_ptr, out_ptr,
            H, W, h, w, n,
            KERNEL: tl.constexpr, STRIDE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        slab = tl.program_id(0)  # one (sample, mode)
        queries = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        channels = tl.arange(0, BLOCK_N)
        in_query = queries < h * w
        in_channel = channels < n
        row, col = queries // w, queries % w
        acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
        value_base = value_ptr + slab.to(tl.int64) * H * W * n
        attn_base = attn_ptr + slab.to(tl.int64) * KERNEL * KERNEL * h * w
        for dy in tl.static_range(KERNEL):
            for dx in tl.static_range(KERNEL):
                y = row * STRIDE + dy - KERNEL // 2
                x = col * STRIDE + dx - KERNEL // 2
                inside = in_query & (y >= 0) & (y < H) & (x >= 0) & (x < W)
                weight = tl.load(attn_base + (dy * KERNEL + dx) * h * w + queries, mask=in_query, other=0.)
                offsets = (y * W + x)[:, None] * n + channels[None, :]
                values = tl.load(value_base + offsets, mask=inside[:, None] & in_channel[None, :], other=0.)
                acc += weight.to(tl.float32)[:, None] * values.to(tl.float32)
        out_offsets = (slab.to(tl.int64) * h * w + queries)[:, None] * n + channels[None, :]
        tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty),
                 mask=in_query[:, None] & in_channel[None, :])


def neighbourhood_sum(value: torch.Tensor, attn: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Weighted k x k neighbourhood sum of per-mode channels-last values, by the Triton kernel.

    Args:
        value: (B, G, H, W, n) projected values, channels last within each mode.
        attn: (B, G, k*k, h, w) weights, offsets row-major; h = ceil(H / stride), w = ceil(W / stride).

    Returns:
        (B, G, h, w, n), contiguous, in ``value``'s dtype (the sum is taken in float32, so float64 values
        lose precision: ``local_attend`` keeps them on the PyTorch path).
    """
    if not HAS_TRITON:
        raise RuntimeError('neighbourhood_sum needs triton (pip install triton), or use local_attend.')
    B, G, H, W, n = value.shape
    h, w = attn.shape[3], attn.shape[4]
    if attn.shape[:3] != (B, G, kernel_size * kernel_size) or (h, w) != (-(-H // stride), -(-W // stride)):
        raise ValueError(f'neighbourhood_sum: attention weights {tuple(attn.shape)} do not fit values '
                         f'{tuple(value.shape)} with kernel_size={kernel_size}, stride={stride}.')
    value, attn = value.contiguous(), attn.contiguous()
    out = value.new_empty(B, G, h, w, n)
    if out.numel() == 0:
        return out
    block_q = 32
    grid = (B * G, triton.cdiv(h * w, block_q))
    # triton launches on the current device, not the tensors'
    with torch.cuda.device(value.device) if value.is_cuda else contextlib.nullcontext():
        _neighbourhood_sum_kernel[grid](
            value, attn, out, H, W, h, w, n,
            KERNEL=kernel_size, STRIDE=stride, BLOCK_Q=block_q, BLOCK_N=triton.next_power_of_2(n))
    return out
