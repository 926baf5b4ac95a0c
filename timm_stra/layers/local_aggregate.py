"""The weighted neighbourhood sum at the heart of local attention, fast on CPU and GPU.

``out[b, g, i, :] = sum_j attn[b, g, i, j] * value[b, g, s*i + offset_j, :]`` over the
k*k offsets of a window, with values outside the map taken as zero.

Tensors are laid out "per mode, channels last": values (B, G, H, W, n) with the n
channels of a mode contiguous, so each offset is one in-place ``addcmul_`` over a
contiguous run of channels, restricted to the rectangle of queries whose neighbour
lies inside the map (no padded copy of the values). The backward pass is written
out the same way instead of leaving autograd to pile up k*k padded gradients.
"""
from typing import List, Tuple

import torch
from timm.layers import register_notrace_function


def _window_regions(
        in_size: int, out_size: int, kernel_size: int, stride: int) -> List[Tuple[int, int, int, int]]:
    """Along one axis, for each window offset: (first query, last query + 1, first input, last input + 1).

    Query q reads input ``stride * q + offset``; only queries whose input lies in
    [0, in_size) are kept. Offsets with no such query give an empty range.
    """
    regions = []
    for d in range(-(kernel_size // 2), kernel_size // 2 + 1):
        q0 = max(0, (stride - 1 - d) // stride)
        q1 = min(out_size - 1, (in_size - 1 - d) // stride) if in_size - 1 - d >= 0 else -1
        regions.append((q0, q1 + 1, stride * q0 + d, stride * q1 + d + 1))
    return regions


class _LocalAggregate(torch.autograd.Function):
    """Autograd function for ``local_aggregate`` (channels-last per mode)."""

    @staticmethod
    def forward(ctx, attn: torch.Tensor, value: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
        B, G, H, W, n = value.shape
        out_h, out_w = attn.shape[2], attn.shape[3]
        rows = _window_regions(H, out_h, kernel_size, stride)
        cols = _window_regions(W, out_w, kernel_size, stride)
        centre = (kernel_size * kernel_size) // 2
        # the centre neighbour of every query is inside the map: it initialises the output
        out = attn[..., centre:centre + 1] * value[:, :, ::stride, ::stride]
        j = 0
        for q0, q1, i0, i1 in rows:
            for p0, p1, k0, k1 in cols:
                if j != centre and q1 > q0 and p1 > p0:
                    out[:, :, q0:q1, p0:p1].addcmul_(
                        attn[:, :, q0:q1, p0:p1, j:j + 1], value[:, :, i0:i1:stride, k0:k1:stride])
                j += 1
        ctx.save_for_backward(attn, value)
        ctx.geometry = (kernel_size, stride, rows, cols)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        attn, value = ctx.saved_tensors
        kernel_size, stride, rows, cols = ctx.geometry
        grad_out = grad_out.contiguous()
        grad_value = torch.zeros_like(value) if ctx.needs_input_grad[1] else None
        grad_attn = torch.zeros_like(attn) if ctx.needs_input_grad[0] else None
        j = 0
        for q0, q1, i0, i1 in rows:
            for p0, p1, k0, k1 in cols:
                if q1 > q0 and p1 > p0:
                    g = grad_out[:, :, q0:q1, p0:p1]
                    if grad_value is not None:
                        grad_value[:, :, i0:i1:stride, k0:k1:stride].addcmul_(g, attn[:, :, q0:q1, p0:p1, j:j + 1])
                    if grad_attn is not None:
                        v = value[:, :, i0:i1:stride, k0:k1:stride]
                        grad_attn[:, :, q0:q1, p0:p1, j] = torch.linalg.vecdot(g, v, dim=-1)
                j += 1
        return grad_attn, grad_value, None, None


def local_aggregate_autograd(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Same as ``local_aggregate`` with plain differentiable ops (for TorchScript; slower)."""
    B, G, H, W, n = value.shape
    out_h, out_w = attn.shape[2], attn.shape[3]
    p = kernel_size // 2
    padded = torch.nn.functional.pad(value, (0, 0, p, p, p, p))
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    out = torch.zeros(B, G, out_h, out_w, n, device=value.device, dtype=value.dtype)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            j = dy * kernel_size + dx
            out = out + attn[..., j:j + 1] * padded[:, :, dy:dy + span_h:stride, dx:dx + span_w:stride]
    return out


@register_notrace_function
def local_aggregate(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Weighted sum of each query's k x k neighbours.

    Args:
        attn: (B, G, out_h, out_w, k*k) weights, offsets row-major.
        value: (B, G, H, W, n) values, channels last within each mode.
        kernel_size: k (odd).
        stride: query stride s: query (i, j) sits at input position (s*i, s*j).

    Returns:
        (B, G, out_h, out_w, n), out_h = ceil(H / s) and out_w = ceil(W / s).
    """
    if torch.jit.is_scripting():
        out = local_aggregate_autograd(attn, value, kernel_size, stride)
    else:
        out = _LocalAggregate.apply(attn.contiguous(), value.contiguous(), kernel_size, stride)
    return out
