"""Multiply-accumulate counts of one forward pass, split the way the paper's convention needs.

torch's ``FlopCounterMode`` counts the matrix products of every op it knows
(convolutions, ``mm``/``addmm`` of linear layers, ``bmm``/``baddbmm``, attention
kernels) as FLOPs = 2 x MACs. The paper counts the MACs of convolutions and
linear layers only; the batched products of attention are not in its numbers.

StRA's own operators are counted by what they compute, not by the kernels that compute
it, so the split does not depend on the implementation or the device:

* the grouped 1x1 convolutions of its logit and mask branches (``ScoreBranch``) count as
  convolutions, whatever products compute them (``layers/grouped_pointwise.py``);
* the local attention's value projection counts as the grouped 1x1 convolution it is,
  ``C_out * C/G`` MACs per input position, and its aggregation, the k*k weighted
  neighbours summed per output channel and position (k*k*C*H'*W' MACs per operator),
  in its own column; both analytically, from the operators' shapes during the same
  forward pass. The products that implement them (row windows times banded weights on
  CPU, an unfold in the reference) are left out.

Everything else torch's counter sees (the mode attention's pooling, affinity and mixing
products, SASA's attention) lands in ``matmul``: these do depend on the kernels (the
reference mode attention pools by elementwise sums the counter does not see).

Elementwise work that is not a product of two feature maps (BatchNorm, ReLU, softmax,
sigmoid, logit sums, the mode gates' scale-and-add, even where a product computes it)
is counted by neither the paper nor torch nor this module.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers.local_attn import LocalAttention
from ..layers.mode_attn import ModeAttention
from ..layers.score_branch import ScoreBranch

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


def _scope_names(model: nn.Module, kind: type) -> List[str]:
    """FlopCounterMode's names of the modules of ``kind`` (outermost only)."""
    root = type(model).__name__
    scopes: List[str] = []
    for name, module in model.named_modules():
        if isinstance(module, kind) and not any(name.startswith(s + '.') for s in scopes):
            scopes.append(name)
    return [f'{root}.{name}' if name else root for name in scopes]


def _products(counts: Dict[str, Dict[object, float]], scope: str, conv: bool) -> float:
    """MACs of the convolution/linear ops (``conv``) or of the other ops the counter saw in ``scope``."""
    return sum(flops / 2 for op, flops in counts.get(scope, {}).items() if (_op_name(op) in CONV_LINEAR_OPS) == conv)


def _op_products(counts: Dict[str, Dict[object, float]], scope: str, name: str) -> float:
    """MACs of the ops called ``name`` (``baddbmm``, ...) the counter saw in ``scope``."""
    return sum(flops / 2 for op, flops in counts.get(scope, {}).items() if _op_name(op) == name)


def count_macs(model: nn.Module, input_size: Sequence[int]) -> MacCount:
    """MACs of one image of ``input_size`` (C, H, W) through ``model`` in its current mode, without gradients.

    Counts a single-image forward pass (batch 1), so BatchNorm must be in eval mode
    (``model.eval()``), as the paper's convention requires anyway.
    """
    if len(input_size) != 3:
        raise ValueError(f'input_size must be (C, H, W), got {tuple(input_size)}.')
    value_macs, local_macs = [], []

    def record(module: LocalAttention, inputs, output: torch.Tensor) -> None:
        x = inputs[0]
        value_macs.append(module.value.weight.numel() * x.shape[2] * x.shape[3])  # grouped 1x1 conv, all positions
        local_macs.append(module.kernel_size ** 2 * output[0].numel())            # k*k per output element

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
    other = sum(by_op.values()) - conv_linear
    for scope in _scope_names(model, ScoreBranch):  # grouped 1x1 convs, whatever products compute them
        conv_part = _products(counts, scope, conv=False)
        conv_linear, other = conv_linear + conv_part, other - conv_part
    for scope in _scope_names(model, ModeAttention):
        # the gates' scale-and-add is elementwise work; computed as rank-1 products (baddbmm, and baddbmm_, which
        # the counter does not see) it would count one of the two gates
        other -= _op_products(counts, scope, 'baddbmm')
    for scope in _scope_names(model, LocalAttention):
        # value projection and aggregation: counted analytically (below); whatever computed them is left out
        score = f'{scope}.score'
        conv_linear -= _products(counts, scope, conv=True) - _products(counts, score, conv=True)
        other -= _products(counts, scope, conv=False) - _products(counts, score, conv=False)
    return MacCount(
        conv_linear=conv_linear + sum(value_macs),
        matmul=other,
        local_aggregation=float(sum(local_macs)),
        by_op=by_op,
    )


def count_params(model: nn.Module, exclude_classifier: bool = True) -> int:
    """Parameters of ``model``, without those of its classifier (``get_classifier()``) by default."""
    skip = set()
    if exclude_classifier and hasattr(model, 'get_classifier'):
        skip = {id(p) for p in model.get_classifier().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
