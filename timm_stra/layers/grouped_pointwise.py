"""Grouped 1x1 convolution as batched matrix products, where that is the faster kernel.

On CPU, oneDNN's grouped 1x1 convolution is slow for StRA's shapes (a few hundred
channels in 8 groups over a small map): measured single-threaded at batch 16 on a
16x8 map, the 512 -> 128 logit-branch conv takes 0.75 ms forward and 10.9 ms forward
and backward as a convolution, 0.55 ms and 3.7 ms as batched products of the
(G, out/G, in/G) weights with the (B, G, in/G, H*W) input. Eager on CUDA (and for
channels-last or other layouts) ``grouped_pointwise`` keeps the convolution: one launch
where the products take several, and eager GPU steps wait on launches (a reason, not a
measurement of the two). Under ``torch.compile`` every device takes the products, through
the autograd.Function below (with autograd's own backward of the broadcast product instead,
the ReID stage's compiled training step at batch 16 took 108-121 ms against 53-55 on this
project's 2-core CPU machine, measured twice each with a scratch script), but under autocast,
where they are plain ops (``_compiling_under_autocast``). The result is then laid out
channels first whatever the input's layout. On a GPU this keeps cuDNN's grouped convolution
out of the compiled step: in an eager profile of a ReID training step on an H200 (batch 16,
``benchmarks/results/h200-2026-11-26/profile.md``) StRA's 59 convolution backward calls took
4.62 ms against the limit's 50 in 2.90 ms: its 9 grouped 1x1 convolutions through cuDNN took
about 190 us each, while the step's batched products averaged 6.4 us. (The compiled GPU step
with products is not measured yet.)

``grouped_pointwise_nodes`` takes the input as per-group nodes (B, G, in/G, N) of any
strides, so mode attention can read the local attention's per-mode channels-last output
without a layout copy; it always computes products.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_function

from .autocast import AutocastState, without_autocast
from .tracing import is_compiling, plain_tensor

# fx leaves for plain torch.fx too, not only timm's tracer (register_notrace_function): layers/tracing.py
torch.fx.wrap('grouped_pointwise')
torch.fx.wrap('grouped_pointwise_nodes')


def _use_matmul(x: torch.Tensor) -> bool:
    return (x.device.type == 'cpu' and x.is_contiguous()) or is_compiling()  # (False under TorchScript)


def _products(nodes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The grouped products as plain differentiable ops, bias added in the product's dtype (autocast's, under
    autocast), as ``_GroupedPointwise`` does.

    Shapes:
        nodes (B, G, in / G, N), weight (out, in / G, 1, 1) -> (B, G, out / G, N)
    """
    G = nodes.shape[1]
    y = torch.matmul(weight.view(G, weight.shape[0] // G, -1), nodes)
    return y if bias is None else y + bias.to(y.dtype).view(G, weight.shape[0] // G, 1)


@torch.jit.unused
def _compiling_under_autocast(x: torch.Tensor) -> bool:
    """torch.compile with autocast on: the products then go without the autograd.Function. Once dynamo has traced
    one such Function under autocast, it takes autocast for off (torch 2.11, 2.14): the next Function's forward
    ran in float32 (or raised an error, its operands in two dtypes), where eager autocast computes in bf16."""
    return is_compiling() and bool(AutocastState(x.device.type).enabled)


class _GroupedPointwise(torch.autograd.Function):
    """Per-group products with the backward written out: autograd's own ``matmul`` backward keeps more at
    once (+2.4 MiB of peak in a ReID training step at batch 16, measured with ``tensor_memory``).

    ``matmul`` broadcasts the weights over the batch by a copy: they are few (a logit or mask branch).
    """

    @staticmethod
    def forward(ctx, nodes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        G = nodes.shape[1]
        out = weight.shape[0]
        y = torch.matmul(weight.view(G, out // G, -1), nodes)
        if bias is not None:
            b = bias.to(y.dtype).view(G, out // G, 1)
            # in place where it runs eagerly (the product is not needed for backward); torch.compile of
            # torch 2.11 mis-traced that in-place write into this node's result: every gradient came out wrong
            y = y + b if is_compiling() else y.add_(b)
        ctx.save_for_backward(nodes, weight)
        ctx.dtype = y.dtype  # autocast's choice
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    @without_autocast
    def backward(ctx, grad_y: torch.Tensor):
        nodes, weight = ctx.saved_tensors
        has_bias = ctx.bias_dtype is not None
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2])
        grad_x, grad_w, grad_b = grouped_pointwise_nodes_backward(grad_y, nodes, weight, needs, ctx.dtype)
        return grad_x, grad_w, None if grad_b is None else grad_b.to(ctx.bias_dtype)


def grouped_pointwise_nodes_backward(grad_y: torch.Tensor, nodes: torch.Tensor, weight: torch.Tensor,
                                     needs: Sequence[bool], dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients of ``grouped_pointwise_nodes(nodes, weight, bias)``, without autograd, computed in ``dtype``:
    of the nodes (in their dtype and layout), the weight (its dtype) and the bias (``dtype``), each where ``needs``
    (three flags) says, else ``None``.

    Shapes:
        grad_y (B, G, out / G, N), nodes (B, G, in / G, N), weight (out, in / G, 1, 1)
    """
    G = nodes.shape[1]
    w = weight.to(dtype).view(G, weight.shape[0] // G, -1)
    grad = grad_y.to(dtype)
    grad_x = grad_w = grad_b = None
    if needs[0]:
        if nodes.stride(2) == 1:  # nodes are a transposed view of positions x channels: match that layout
            grad_x = torch.matmul(grad.transpose(2, 3), w).transpose(2, 3)
        else:
            grad_x = torch.matmul(w.transpose(1, 2), grad)
        grad_x = grad_x.to(nodes.dtype)
    if needs[1]:
        grad_w = torch.matmul(grad, nodes.to(dtype).transpose(2, 3)).sum(0).view(weight.shape).to(weight.dtype)
    if needs[2]:
        grad_b = grad.sum((0, 3)).reshape(-1)
    return grad_x, grad_w, grad_b


def grouped_pointwise_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int,
                               needs: Sequence[bool], dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients of ``grouped_pointwise(x, weight, bias, groups)``, without autograd, computed in ``dtype``
    (the forward's, autocast's where it ran): of ``x`` (its dtype), the weight (its dtype) and the bias
    (``dtype``), each where ``needs`` (three flags) says, else ``None``. The same kernels as the forward:
    products where it took products, else the convolution's backward.

    Shapes:
        grad_y (B, out, H, W), x (B, in, H, W), weight (out, in / groups, 1, 1)
    """
    B, C, H, W = x.shape
    out = weight.shape[0]
    if _use_matmul(x):
        nodes = x.reshape(B, groups, C // groups, H * W)
        grad_y = grad_y.reshape(B, groups, out // groups, H * W)
        grad_x, grad_w, grad_b = grouped_pointwise_nodes_backward(grad_y, nodes, weight, needs, dtype)
        return None if grad_x is None else grad_x.view(x.shape), grad_w, grad_b
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_y.to(dtype), x.to(dtype), weight.to(dtype), [out] if needs[2] else None, [1, 1], [0, 0], [1, 1], False,
        [0, 0], groups, [bool(n) for n in needs])
    return (None if grad_x is None else grad_x.to(x.dtype), None if grad_w is None else grad_w.to(weight.dtype),
            grad_b)


@register_notrace_function
def grouped_pointwise_nodes(nodes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Grouped 1x1 convolution of per-group nodes, G = ``nodes.shape[1]``.

    Shapes:
        nodes: (B, G, in / G, N), any strides with one unit stride per group's matrix;
        weight: (out, in / G, 1, 1) -> (B, G, out / G, N), contiguous.
    """
    # plain ops also under jit tracing (which would record a Python op), functorch transforms and forward-mode AD,
    # which _GroupedPointwise has no rules for
    if (torch.jit.is_scripting() or torch.jit.is_tracing() or _compiling_under_autocast(nodes)
            or not (is_compiling() or plain_tensor(nodes))):
        return _products(nodes, weight, bias)
    return _GroupedPointwise.apply(nodes, weight, bias)


@register_notrace_function
def grouped_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, groups=groups)`` for a 1x1 ``weight`` (out, in / groups, 1, 1).

    Shapes:
        x: (B, in, H, W) -> (B, out, H, W)
    """
    if torch.jit.is_scripting() or not _use_matmul(x):
        return F.conv2d(x, weight, bias, groups=groups)
    B, C, H, W = x.shape
    nodes = x.reshape(B, groups, C // groups, H * W)  # a view of NCHW and channels-last input alike
    return grouped_pointwise_nodes(nodes, weight, bias).view(B, weight.shape[0], H, W)


@register_notrace_function
def grouped_pointwise_channels_last(x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped 1x1 projection without bias, laid out channels last per group.

    Shapes:
        x: (B, in, H, W) -> (B, G, H, W, out / G)
    """
    B, C, H, W = x.shape
    out = weight.shape[0]
    if not _use_matmul(x):
        v = F.conv2d(x, weight, groups=groups)
        return v.view(B, groups, out // groups, H, W).permute(0, 1, 3, 4, 2).contiguous()
    # (B, G, H*W, in/G) @ (G, in/G, out/G): both operands transposed views, the product lands channels last
    w = weight.view(groups, out // groups, C // groups).transpose(1, 2)
    v = torch.matmul(x.reshape(B, groups, C // groups, H * W).transpose(2, 3), w)
    return v.view(B, groups, H, W, out // groups)


class GroupedPointwiseConv(nn.Conv2d):
    """``nn.Conv2d(in_chs, out_chs, 1, groups=groups)`` computed by ``grouped_pointwise``.

    Same parameters and state dict as the convolution it replaces.

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H, W); ``forward_nodes``: (B, G, in_chs / G, N) -> (B, out_chs, N)
    """

    def __init__(self, in_chs: int, out_chs: int, groups: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_chs, out_chs, 1, groups=groups, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_pointwise(x, self.weight, self.bias, self.groups)

    def forward_nodes(self, nodes: torch.Tensor) -> torch.Tensor:
        B, N = nodes.shape[0], nodes.shape[3]
        return grouped_pointwise_nodes(nodes, self.weight, self.bias).view(B, self.out_channels, N)
