"""The grouped bottleneck that scores positions in both halves of StRA.

Local attention uses it to produce the neighbour and query logits, mode attention
to produce the spatial mask logits: ``GC(C -> hidden, bias) -> BN -> tanh ->
GC(hidden -> out, bias) -> BN``, where ``GC`` is a 1x1 convolution with ``groups``
groups (SPEC 1.1 step 1 and 1.2 step 1).

In training the fast branch keeps only its input for backward and recomputes itself there
(``score_replay.py``): its hidden maps are wider than its output and, per image, cost more
memory than what they save in time to keep.
"""
from functools import partial
from typing import Final, Optional, Tuple

import torch
from torch import nn

from .grouped_pointwise import GroupedPointwiseConv
from .replay import has_hooks, replayable_norm
from .score_replay import BranchReplay, score_replayed
from .tracing import eager_autograd


class ScoreBranch(nn.Module):
    """Grouped 1x1 conv -> BN -> tanh -> grouped 1x1 conv -> BN.

    Args:
        in_chs: input channels C, divisible by ``groups``.
        hidden_chs: bottleneck width, divisible by ``groups``.
        out_chs: output channels, divisible by ``groups``.
        groups: number of groups G of both convolutions.
        fast: compute the grouped convolutions as batched products where that is faster
            (``GroupedPointwiseConv``); ``False`` keeps plain ``nn.Conv2d`` layers, as the
            authors' release has them (the reference operators). Same state dict either way.
        recompute: with ``fast``, keep only the input for backward and recompute the rest there
            (an eager autograd forward with plain ``nn.BatchNorm2d`` norms and no forward hooks on
            the layers; otherwise the branch runs as usual). Same values, gradients and running statistics.

    Shapes:
        (B, in_chs, H, W) -> (B, out_chs, H, W), or per-group nodes (B, G, in_chs / G, H*W) of any
        strides with ``size=(H, W)`` given -> (B, out_chs, H, W) (``fast`` branches read them in place)
    """
    fast: Final[bool]
    recompute: Final[bool]

    def __init__(
            self,
            in_chs: int,
            hidden_chs: int,
            out_chs: int,
            groups: int,
            fast: bool = True,
            recompute: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fast = fast
        self.recompute = fast and recompute
        conv_layer = GroupedPointwiseConv if fast else partial(nn.Conv2d, kernel_size=1)
        self.conv1 = conv_layer(in_chs, hidden_chs, groups=groups, **dd)
        self.bn1 = nn.BatchNorm2d(hidden_chs, **dd)
        self.act = nn.Tanh()
        self.conv2 = conv_layer(hidden_chs, out_chs, groups=groups, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        nn.init.zeros_(self.conv1.bias)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if self.recompute and not torch.jit.is_scripting() and self._replays(x):
            return self._forward_replayed(x, size)
        return self._branch(x, size)

    def _branch(self, x: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
        return self.bn2(self.conv2(self.act(self.bn1(self._conv1(x, size)))))

    def _conv1(self, x: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
        if size is not None:  # per-group nodes (B, G, in_chs / G, H*W)
            B, hidden = x.shape[0], self.conv1.out_channels
            # nested on the constant ``fast``: TorchScript then never compiles forward_nodes for a plain nn.Conv2d
            if self.fast:
                if torch.jit.is_scripting() or not self._conv1_hooked():
                    return self.conv1.forward_nodes(x).view(B, hidden, size[0], size[1])
            return self.conv1(x.reshape(B, self.conv1.in_channels, size[0], size[1]))
        return self.conv1(x)

    @torch.jit.unused
    def _conv1_hooked(self) -> bool:
        """Forward hooks on ``conv1``, which ``forward_nodes`` would skip: nodes then go through the module."""
        return has_hooks(self.conv1)

    @torch.jit.unused
    def _replays(self, x: torch.Tensor) -> bool:
        return eager_autograd(x) and replayable_norm(self.bn1) and replayable_norm(self.bn2) and not (
            has_hooks(self.conv1, self.conv2, self.act))

    @torch.jit.unused
    def _forward_replayed(self, x: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
        # the backward computes with the tensors of this forward, read now (see score_replay.py)
        replay = BranchReplay(self.conv1, self.bn1, self.conv2, self.bn2, size)
        return score_replayed(lambda t: self._branch(t, size), replay, x)
