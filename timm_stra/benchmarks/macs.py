"""Multiply-accumulate counts of one forward pass, split the way the paper's convention needs.

torch's ``FlopCounterMode`` counts the matrix products of every op it knows
(convolutions, ``mm``/``addmm`` of linear layers, ``bmm``/``baddbmm``, attention
kernels) as FLOPs = 2 x MACs. The paper counts the MACs of convolutions and
linear layers only; the batched products of attention are not in its numbers.

One product is not seen by torch's counter at all: the aggregation of StRA's
local attention (``LocalAttention.aggregate``, and its unfold reference) is a
sum of k*k elementwise multiply-adds over a (C, H', W') map, i.e. k*k*C*H'*W'
MACs per operator. It is counted analytically here, from the operators' output
shapes during the same forward pass, and reported in its own column.

On CPU the grouped 1x1 convolutions of StRA run as batched matrix products
(``layers/grouped_pointwise.py``). Products inside ``GroupedPointwiseConv`` and
``LocalAttention`` modules are therefore counted as convolutions whatever kernel
computes them, so the split does not depend on the device; only the products of
mode attention and SASA land in ``matmul``.

Elementwise work that is not a product of two feature maps (BatchNorm, ReLU,
softmax, sigmoid, the scale-and-add of the mode gates, the logit sums) is counted
by neither the paper nor torch nor this module.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers.grouped_pointwise import GroupedPointwiseConv
from ..layers.local_attn import LocalAttention

# aten ops whose products are convolutions or linear layers (the paper's convention)
CONV_LINEAR_OPS = frozenset({'convolution', '_convolution', 'cudnn_convolution', 'mm', 'addmm'})


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one image, by kind.

    Attributes:
        conv_linear: convolutions and linear layers (the paper's convention).
        matmul: other matrix products torch's counter sees (``bmm``, ``baddbmm``, attention
            kernels): the attention products of SASA and of the mode attention.
        local_aggregation: the local attention's weighted sums, k*k*C*H'*W' per operator
            (elementwise, invisible to torch's counter; analytic).
        by_op: torch's counter per aten op (MACs), for reference.
    """
    conv_linear: float
    matmul: float
    local_aggregation: float
    by_op: Dict[str, float]

    @property
    def total(self) -> float:
        """Every product counted: conv + linear, attention matmuls and the local aggregation."""
        return self.conv_linear + self.matmul + self.local_aggregation


def _op_name(op) -> str:
    """``aten.convolution.default`` / ``aten.convolution`` -> ``convolution``."""
    parts = str(op).split('.')
    return parts[1] if len(parts) > 1 else parts[0]


def _conv_scopes(model: nn.Module) -> List[str]:
    """FlopCounterMode's names of the outermost modules whose products are all convolutions."""
    scopes: List[str] = []
    for name, module in model.named_modules():
        if isinstance(module, (GroupedPointwiseConv, LocalAttention)):
            if not any(name.startswith(scope + '.') for scope in scopes):
                scopes.append(name)
    root = type(model).__name__
    return [f'{root}.{name}' if name else root for name in scopes]


def count_macs(model: nn.Module, input_size: Sequence[int]) -> MacCount:
    """MACs of one image of ``input_size`` (C, H, W) through ``model`` in its current mode, without gradients.

    Counts a single-image forward pass (batch 1), so BatchNorm must be in eval mode
    (``model.eval()``), as the paper's convention requires anyway.
    """
    if len(input_size) != 3:
        raise ValueError(f'input_size must be (C, H, W), got {tuple(input_size)}.')
    local_macs = []

    def record(module: LocalAttention, _inputs, output: torch.Tensor) -> None:
        local_macs.append(module.kernel_size ** 2 * output[0].numel())

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, LocalAttention)]
    counter = FlopCounterMode(display=False)
    try:
        param = next(model.parameters(), None)
        x = torch.randn(1, *input_size, device=param.device if param is not None else None)
        with torch.no_grad(), counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    counts = counter.get_flop_counts()
    by_op = {_op_name(op): flops / 2 for op, flops in counts['Global'].items()}
    conv_linear = sum(v for op, v in by_op.items() if op in CONV_LINEAR_OPS)
    for scope in _conv_scopes(model):  # grouped 1x1 convs computed as batched products
        conv_linear += sum(flops / 2 for op, flops in counts.get(scope, {}).items()
                           if _op_name(op) not in CONV_LINEAR_OPS)
    return MacCount(
        conv_linear=conv_linear,
        matmul=sum(by_op.values()) - conv_linear,
        local_aggregation=float(sum(local_macs)),
        by_op=by_op,
    )


def count_params(model: nn.Module, exclude_classifier: bool = True) -> int:
    """Parameters of ``model``, without those of its classifier (``get_classifier()``) by default."""
    skip = set()
    if exclude_classifier and hasattr(model, 'get_classifier'):
        skip = {id(p) for p in model.get_classifier().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
