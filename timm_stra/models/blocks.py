"""The StRA bottleneck block and the builder of a ResNet's last stage.

A StRA bottleneck is timm's ``Bottleneck`` with its 3x3 convolution replaced by
``StRAttention`` (SPEC 2): ``1x1 conv -> BN -> ReLU -> local attention -> mode
attention -> BN -> ReLU -> 1x1 conv -> BN``, plus the shortcut, then ReLU. It
keeps timm's attribute names, so ``conv2`` is the operator.
"""
from typing import Optional, Sequence, Tuple, Type

import torch
from torch import nn
from timm.layers import DropPath
from timm.models.resnet import downsample_conv, drop_blocks

from ..layers import StRAttention


class StRABottleneck(nn.Module):
    """Bottleneck whose 3x3 conv is a StRA operator.

    Args:
        inplanes: input channels.
        planes: width of the operator; the block outputs ``4 * planes`` channels, or
            ``planes`` when ``fuse`` is False.
        stride: stride of the operator (1 or 2).
        downsample: shortcut projection, or None for the identity.
        fuse: keep the last 1x1 conv and its BN. The FER variant omits them (SPEC 2).
        local_op, mode, groups, kernel_size, reduction, reference, recompute: see ``StRAttention``.

    Shapes:
        (B, inplanes, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))
    """
    expansion = 4

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            fuse: bool = True,
            local_op: str = 'local',
            mode: str = 'full',
            groups: int = 8,
            kernel_size: int = 3,
            reduction: int = 4,
            reference: bool = False,
            recompute: bool = True,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            drop_block: Optional[Type[nn.Module]] = None,
            drop_path: Optional[nn.Module] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.out_chs = self.out_channels(planes, fuse)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False, **dd)
        self.bn1 = norm_layer(planes, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = StRAttention(
            planes, stride, groups, kernel_size, reduction, local_op, mode, reference, recompute, **dd)
        self.bn2 = norm_layer(planes, **dd)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act2 = act_layer(inplace=True)
        if fuse:
            self.conv3 = nn.Conv2d(planes, self.out_chs, kernel_size=1, bias=False, **dd)
            self.bn3 = norm_layer(self.out_chs, **dd)
        else:
            self.conv3 = nn.Identity()
            self.bn3 = nn.Identity()
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.drop_path = drop_path

    @staticmethod
    def out_channels(planes: int, fuse: bool = True) -> int:
        """Channels a block of width ``planes`` outputs: ``4 * planes``, or ``planes`` without the last 1x1 conv."""
        return planes * StRABottleneck.expansion if fuse else planes

    def zero_init_last(self) -> None:
        """Zero the last BN's scale so the block starts as its shortcut (timm's ``zero_init_last``)."""
        if getattr(self.bn3, 'weight', None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.drop_block(self.bn2(self.conv2(x))))
        x = self.bn3(self.conv3(x))
        if self.drop_path is not None:
            x = self.drop_path(x)
        # out of place: without the last 1x1 conv, x is still the ReLU output autograd needs
        return self.act3(x + shortcut)


def make_last_stage(
        block_fn: Type[nn.Module],
        inplanes: int,
        planes: int,
        depth: int,
        stride: int,
        out_chs: int,
        drop_path_rates: Sequence[float],
        drop_block_rate: float = 0.,
        norm_layer: Type[nn.Module] = nn.BatchNorm2d,
        device=None,
        dtype=None,
        **block_kwargs,
) -> Tuple[nn.Sequential, int]:
    """Build a ResNet's last stage from ``block_fn`` (timm's ``Bottleneck`` or ``StRABottleneck``).

    Unlike timm's ``make_blocks`` this takes the stride of the stage directly, so that a
    "last stride 1" stage keeps its full resolution without dilation (person ReID).

    Returns:
        The stage and its output channels.
    """
    dd = {'device': device, 'dtype': dtype}
    downsample = None
    if stride != 1 or inplanes != out_chs:
        downsample = downsample_conv(inplanes, out_chs, kernel_size=1, stride=stride, norm_layer=norm_layer, **dd)
    drop_block = drop_blocks(drop_block_rate)[-1]
    blocks = []
    for idx in range(depth):
        blocks.append(block_fn(
            inplanes if idx == 0 else out_chs,
            planes,
            stride if idx == 0 else 1,
            downsample if idx == 0 else None,
            norm_layer=norm_layer,
            drop_block=drop_block,
            drop_path=DropPath(drop_path_rates[idx]) if drop_path_rates[idx] > 0. else None,
            **block_kwargs,
            **dd,
        ))
    return nn.Sequential(*blocks), out_chs
