"""Grouped 1x1 convolution as a batched matrix product, where that is the faster kernel.

On CPU, oneDNN's grouped 1x1 convolution is slow for StRA's shapes (a few hundred
channels in 8 groups over a small map): measured single-threaded at batch 16 on a
16x8 map, the 512 -> 128 logit-branch conv takes 0.75 ms forward and 10.9 ms forward
and backward as a convolution, 0.55 ms and 3.7 ms as one broadcast ``matmul`` of the
(G, out/G, in/G) weights with the (B, G, in/G, H*W) input. Elsewhere (CUDA, channels
last, other layouts) the convolution is kept: it is the kernel we have not measured
to lose.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_function


def _use_matmul(x: torch.Tensor) -> bool:
    return x.device.type == 'cpu' and x.is_contiguous()


@register_notrace_function
def grouped_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, groups=groups)`` for a 1x1 ``weight`` (out, in / groups, 1, 1).

    Shapes:
        x: (B, in, H, W) -> (B, out, H, W)
    """
    if not _use_matmul(x):
        return F.conv2d(x, weight, bias, groups=groups)
    B, C, H, W = x.shape
    out = weight.shape[0]
    y = torch.matmul(weight.view(groups, out // groups, C // groups), x.view(B, groups, C // groups, H * W))
    if bias is not None:
        y = y + bias.to(y.dtype).view(groups, out // groups, 1)
    return y.view(B, out, H, W)


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
    v = torch.matmul(x.view(B, groups, C // groups, H * W).transpose(2, 3), w)
    return v.view(B, groups, H, W, out // groups)


class GroupedPointwiseConv(nn.Conv2d):
    """``nn.Conv2d(in_chs, out_chs, 1, groups=groups)`` computed by ``grouped_pointwise``.

    Same parameters and state dict as the convolution it replaces.

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H, W)
    """

    def __init__(self, in_chs: int, out_chs: int, groups: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_chs, out_chs, 1, groups=groups, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_pointwise(x, self.weight, self.bias, self.groups)
