"""The StRA operator: a local operator followed by mode attention (SPEC 1 and 2).

``StRAttention`` replaces the 3x3 convolution of a bottleneck block. Its two
knobs reproduce the paper's ablations (Tables 1 and 2):

* ``local_op``: ``'local'`` (StRA local attention), ``'conv'`` (3x3 conv, the
  ResNet block), ``'group_conv'`` (3x3 conv with G groups), ``'sasa'``
  (stand-alone self-attention), or ``'local_reference'`` (the unfold-based
  reference of ``'local'``: same parameters, slower; for tests and benchmarks).
* ``mode``: ``'full'``, ``'no_interaction'`` or ``'none'``.
"""
import torch
from torch import nn

from .checks import check_choice, check_divisible, check_feature_map
from .local_attn import LocalAttention
from .local_attn_ref import LocalAttentionReference
from .mode_attn import ModeAttention
from .sasa import SelfAttention2d

LOCAL_OPS = ('local', 'conv', 'group_conv', 'sasa', 'local_reference')
MODES = ('full', 'no_interaction', 'none')


def create_local_op(
        local_op: str,
        dim: int,
        stride: int = 1,
        groups: int = 8,
        kernel_size: int = 3,
        reduction: int = 4,
        device=None,
        dtype=None,
) -> nn.Module:
    """Build the local operator of a StRA block: (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride)).

    ``kernel_size`` is the window of ``local``/``local_reference`` and the kernel of
    ``conv``/``group_conv``; SASA always uses the paper's 8 heads and 7x7 window.
    """
    dd = {'device': device, 'dtype': dtype}
    check_choice(local_op, LOCAL_OPS, 'local_op')
    if local_op == 'local':
        return LocalAttention(dim, groups, kernel_size, stride, reduction, **dd)
    if local_op == 'local_reference':
        return LocalAttentionReference(dim, groups, kernel_size, stride, reduction, **dd)
    if local_op == 'sasa':
        return SelfAttention2d(dim, heads=8, kernel_size=7, stride=stride, qkv_groups=groups, **dd)
    conv_groups = groups if local_op == 'group_conv' else 1
    return nn.Conv2d(
        dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=conv_groups, bias=False, **dd)


class StRAttention(nn.Module):
    """Structure-Regularized Attention: ``mode(local(x))``.

    Args:
        dim: channels C, divisible by ``groups``.
        stride: 1, or 2 to downsample like a strided 3x3 conv with padding 1.
        groups: number of modes G (default 8).
        kernel_size: local window k (default 3).
        reduction: reduction r of the local logit branch (default 4).
        local_op: one of ``LOCAL_OPS``.
        mode: one of ``MODES``.

    Shapes:
        (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))
    """

    def __init__(
            self,
            dim: int,
            stride: int = 1,
            groups: int = 8,
            kernel_size: int = 3,
            reduction: int = 4,
            local_op: str = 'local',
            mode: str = 'full',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_choice(local_op, LOCAL_OPS, 'local_op')
        check_choice(mode, MODES, 'mode')
        check_divisible(dim, groups, 'StRAttention')
        self.dim = dim
        self.local_op = local_op
        self.mode_type = mode
        self.local = create_local_op(local_op, dim, stride, groups, kernel_size, reduction, **dd)
        if mode == 'none':
            self.mode = nn.Identity()
        else:
            self.mode = ModeAttention(dim, groups, interaction=mode == 'full', **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim, 'StRAttention')
        return self.mode(self.local(x))
