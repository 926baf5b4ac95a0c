"""The value projection and weighted neighbourhood sum of local attention, fast and lean.

``out[b, g, i, :] = sum_j attn[b, g, i, j] * value[b, g, s*i + offset_j, :]`` over the
k*k offsets of a window, with values outside the map taken as zero, where
``value`` is the grouped 1x1 projection of the input.

Values are laid out "per mode, channels last": (B, G, H, W, n) with the n channels
of a mode contiguous, so each offset is one in-place ``addcmul_`` over a contiguous
run of channels, restricted to the rectangle of queries whose neighbour lies inside
the map (no padded copy). The backward pass is written out the same way instead of
leaving autograd to pile up k*k padded gradients, and recomputes the projected
values from the input (which the logit branch keeps anyway) rather than holding them.
"""
from typing import List, Tuple

import torch
from timm.layers import register_notrace_function

from .grouped_pointwise import grouped_pointwise_channels_last


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



def _per_mode(x: torch.Tensor, weight: torch.Tensor, groups: int):
    """Views for the projection as batched matrix products: x (B, G, C/G, H*W), weight (G, C_out/G, C/G)."""
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H * W), weight.view(groups, -1, C // groups)


def _aggregate(attn: torch.Tensor, value: torch.Tensor, rows, cols, kernel_size: int, stride: int) -> torch.Tensor:
    """attn (B, G, k*k, h, w), value (B, G, H, W, n) -> (B, G, h, w, n)."""
    centre = (kernel_size * kernel_size) // 2
    # the centre neighbour of every query is inside the map: it initialises the output
    out = attn[:, :, centre].unsqueeze(-1) * value[:, :, ::stride, ::stride]
    j = 0
    for q0, q1, i0, i1 in rows:
        for p0, p1, k0, k1 in cols:
            if j != centre and q1 > q0 and p1 > p0:
                out[:, :, q0:q1, p0:p1].addcmul_(
                    attn[:, :, j, q0:q1, p0:p1].unsqueeze(-1), value[:, :, i0:i1:stride, k0:k1:stride])
            j += 1
    return out


class _LocalAttend(torch.autograd.Function):
    """Value projection and neighbourhood sum in one autograd node.

    Only the (already saved) input and the weights are kept for backward: the
    projected values, as large as the input, are recomputed there instead of held.
    """

    @staticmethod
    def forward(ctx, attn: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int,
                kernel_size: int, stride: int) -> torch.Tensor:
        value = grouped_pointwise_channels_last(x, weight, groups)  # under autocast, in the autocast dtype
        rows = _window_regions(value.shape[2], attn.shape[3], kernel_size, stride)
        cols = _window_regions(value.shape[3], attn.shape[4], kernel_size, stride)
        ctx.attn_dtype = attn.dtype
        attn = attn.to(value.dtype)
        ctx.save_for_backward(attn, x, weight)
        ctx.geometry = (groups, kernel_size, stride, rows, cols)
        return _aggregate(attn, value, rows, cols, kernel_size, stride)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        attn, x, weight = ctx.saved_tensors
        groups, kernel_size, stride, rows, cols = ctx.geometry
        B, _, H, W = x.shape
        dtype = attn.dtype  # the forward's compute dtype (autocast does not reach backward)
        x_c, weight_c = x.to(dtype), weight.to(dtype)
        value = grouped_pointwise_channels_last(x_c, weight_c, groups)  # the projection again
        nodes, w = _per_mode(x_c, weight_c, groups)
        grad_out = grad_out.to(dtype).contiguous()
        centre = (kernel_size * kernel_size) // 2
        if stride == 1:  # the centre term covers every position: it initialises the value gradient
            grad_value = attn[:, :, centre].unsqueeze(-1) * grad_out
        else:
            grad_value = torch.zeros_like(value)
        grad_attn = torch.zeros_like(attn)
        scratch = grad_out.new_empty(grad_out.numel())  # one buffer for every offset's products: no allocator churn
        j = 0
        for q0, q1, i0, i1 in rows:
            for p0, p1, k0, k1 in cols:
                if q1 > q0 and p1 > p0:
                    g = grad_out[:, :, q0:q1, p0:p1]
                    if stride != 1 or j != centre:
                        grad_value[:, :, i0:i1:stride, k0:k1:stride].addcmul_(
                            g, attn[:, :, j, q0:q1, p0:p1].unsqueeze(-1))
                    product = scratch[:g.numel()].view(g.shape)  # contiguous, as out= under torch.compile needs
                    torch.mul(g, value[:, :, i0:i1:stride, k0:k1:stride], out=product)
                    grad_attn[:, :, j, q0:q1, p0:p1] = product.sum(-1)
                j += 1
        del value, scratch
        grad_value = grad_value.view(B, groups, H * W, -1)                    # B, G, N, n_out
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.matmul(w.transpose(-1, -2), grad_value.transpose(-1, -2)).view(x.shape).to(x.dtype)
        if ctx.needs_input_grad[2]:
            grad_weight = torch.matmul(grad_value.transpose(-1, -2), nodes.transpose(-1, -2)).sum(0)
            grad_weight = grad_weight.view(weight.shape).to(weight.dtype)
        return grad_attn.to(ctx.attn_dtype), grad_x, grad_weight, None, None, None


def local_attend_autograd(
        attn: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, kernel_size: int, stride: int,
) -> torch.Tensor:
    """Same as ``local_attend`` with plain differentiable ops (for TorchScript; slower, keeps more for backward)."""
    value = grouped_pointwise_channels_last(x, weight, groups)
    B, G, H, W, n = value.shape
    out_h, out_w = attn.shape[3], attn.shape[4]
    p = kernel_size // 2
    padded = torch.nn.functional.pad(value, (0, 0, p, p, p, p))
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    out = torch.zeros(B, G, out_h, out_w, n, device=value.device, dtype=value.dtype)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            j = dy * kernel_size + dx
            out = out + attn[:, :, j].unsqueeze(-1) * padded[:, :, dy:dy + span_h:stride, dx:dx + span_w:stride]
    return out


@register_notrace_function
def local_attend(
        attn: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, kernel_size: int, stride: int,
) -> torch.Tensor:
    """Project the values (grouped 1x1 conv) and take each query's weighted sum of its k x k neighbours.

    Args:
        attn: (B, G, k*k, out_h, out_w) weights, offsets row-major.
        x: (B, C, H, W) input of the value projection.
        weight: (C_out, C / G, 1, 1) value projection weight, G = ``groups``; n = C_out / G.
        kernel_size: k (odd).
        stride: query stride s: query (i, j) sits at input position (s*i, s*j).

    Returns:
        (B, G, out_h, out_w, n), out_h = ceil(H / s) and out_w = ceil(W / s).
    """
    if torch.jit.is_scripting():
        out = local_attend_autograd(attn, x, weight, groups, kernel_size, stride)
    else:
        out = _LocalAttend.apply(attn, x.contiguous(), weight, groups, kernel_size, stride)
    return out
