"""The score branch as one autograd node that keeps only its input and recomputes the rest in backward.

``GC(C -> hidden, bias) -> BN -> tanh -> GC(hidden -> out, bias) -> BN`` (``score_branch.py``):
its hidden maps are wider than its output and, per image, cost more memory than what they
save in time to keep. The forward keeps only its input ``x`` (with ``save_for_backward``, so
saved-tensor hooks see it: ``recompute_saved`` can drop it too) and the parameters, which live
on anyway (saved for autograd's check that nothing changed them in place); the backward recomputes the
hidden maps with the forward's tensors (``BranchReplay``) and differentiates the branch by
hand, without building an autograd graph: on a GPU every op there is a launch from Python, and
an ``autograd.grad`` through a replay added its engine's work to each.

What the replay must hold to (checked in ``tests/test_recompute.py``):

* BatchNorm in training mode normalises the replay with the same batch statistics and does
  not update its running statistics a second time (``NormReplay``);
* the tensors are the forward's, whatever happens to the module in between
  (``torch.func.functional_call`` swaps parameters only for the forward; ``eval()`` flips
  BatchNorm): ``BranchReplay`` takes them when the forward runs;
* the compute dtype is the forward's (autocast's, where it ran), whatever region backward runs
  in, and each op's dtypes are those autograd's backward would take.

Double backward is refused (an error).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .autocast import without_autocast
from .first_order import first_order_only
from .grouped_pointwise import grouped_pointwise, grouped_pointwise_backward, grouped_pointwise_nodes, \
    grouped_pointwise_nodes_backward
from .replay import NormReplay


class BranchReplay:
    """What the backward of one forward of a score branch needs: its tensors and norms as that forward saw them.

    Args:
        conv1, norm1, conv2, norm2: the branch's layers (``GroupedPointwiseConv`` and plain ``nn.BatchNorm2d``).
        size: (H, W) when the input is per-group nodes (B, G, in / G, H*W), else ``None`` for (B, in, H, W).
    """

    def __init__(self, conv1: nn.Conv2d, norm1: nn.BatchNorm2d, conv2: nn.Conv2d, norm2: nn.BatchNorm2d,
                 size: Optional[Tuple[int, int]]):
        self.size = size
        self.groups = conv1.groups
        self.w1, self.b1, self.w2, self.b2 = conv1.weight, conv1.bias, conv2.weight, conv2.bias
        self.norm1, self.norm2 = NormReplay(norm1), NormReplay(norm2)

    def params(self) -> List[Optional[torch.Tensor]]:
        """The tensors gradients go to, in ``backward``'s order: conv1 weight and bias, norm1 weight and bias,
        then conv2's and norm2's (``None`` where a layer has none)."""
        return [self.w1, self.b1, self.norm1.weight, self.norm1.bias,
                self.w2, self.b2, self.norm2.weight, self.norm2.bias]

    def hidden(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The first convolution's output (B, hidden, H, W), computed in ``dtype`` as the forward did."""
        w1, b1 = self.w1.to(dtype), None if self.b1 is None else self.b1.to(dtype)
        if self.size is not None:
            return grouped_pointwise_nodes(x.to(dtype), w1, b1).view(x.shape[0], w1.shape[0], *self.size)
        return grouped_pointwise(x.to(dtype), w1, b1, self.groups)

    def backward(self, x: torch.Tensor, grad_y: torch.Tensor, needs: Sequence[bool], dtype: torch.dtype
                 ) -> List[Optional[torch.Tensor]]:
        """Recompute the branch at ``x`` in ``dtype`` and return the gradients of its input and of ``params()``
        (where ``needs``, nine flags, says, else ``None``)."""
        w2, b2 = self.w2.to(dtype), None if self.b2 is None else self.b2.to(dtype)
        hidden = self.hidden(x, dtype)
        normed, saved1 = self.norm1.forward_saving(hidden)
        act = torch.tanh(normed)
        logits = grouped_pointwise(act, w2, b2, self.groups)
        saved2 = self.norm2.forward_saving(logits)[1]
        grad_logits, g_n2w, g_n2b = self.norm2.backward(grad_y.to(dtype), logits, saved2, needs[7:9])
        grad_act, g_w2, g_b2 = grouped_pointwise_backward(grad_logits, act, self.w2, self.groups,
                                                          (True, needs[5], needs[6] and b2 is not None), dtype)
        grad_norm1 = torch.ops.aten.tanh_backward(grad_act.to(dtype), act)
        grad_hidden, g_n1w, g_n1b = self.norm1.backward(grad_norm1, hidden, saved1, needs[3:5])
        conv1_needs = (needs[0], needs[1], needs[2] and self.b1 is not None)
        if self.size is not None:
            B, G = x.shape[:2]
            grad_hidden = grad_hidden.view(B, G, -1, x.shape[3])
            grad_x, g_w1, g_b1 = grouped_pointwise_nodes_backward(grad_hidden, x, self.w1, conv1_needs, dtype)
        else:
            grad_x, g_w1, g_b1 = grouped_pointwise_backward(grad_hidden, x, self.w1, self.groups, conv1_needs, dtype)
        grads = [grad_x, g_w1, g_b1, g_n1w, g_n1b, g_w2, g_b2, g_n2w, g_n2b]
        for i, t in ((2, self.b1), (6, self.b2)):
            if grads[i] is not None:
                grads[i] = grads[i].to(t.dtype)
        return [g if need else None for g, need in zip(grads, needs)]


class _ScoreReplay(torch.autograd.Function):
    """Keeps ``x`` and the parameters (which live on in the module anyway), both saved for backward."""

    @staticmethod
    def forward(ctx, run: Callable[[torch.Tensor], torch.Tensor], replay: BranchReplay, x: torch.Tensor,
                *params: Optional[torch.Tensor]):
        y = run(x)
        ctx.replay = replay
        ctx.dtype = y.dtype  # the compute dtype: autocast's where it ran
        # the parameters too, only for autograd's check that nothing changed them in place before backward
        ctx.save_for_backward(x, *(p for p in params if p is not None))
        return y

    @staticmethod
    @first_order_only
    @without_autocast
    def backward(ctx, grad_y: torch.Tensor):
        x = ctx.saved_tensors[0]
        return (None, None, *ctx.replay.backward(x, grad_y, ctx.needs_input_grad[2:], ctx.dtype))


def score_replayed(run: Callable[[torch.Tensor], torch.Tensor], replay: BranchReplay, x: torch.Tensor
                   ) -> torch.Tensor:
    """``run(x)`` (the branch's forward with its modules: the norms update their running statistics), keeping
    only ``x`` for backward, which recomputes and differentiates the branch by hand with ``replay``."""
    return _ScoreReplay.apply(run, replay, x, *replay.params())
