"""A BatchNorm as one forward saw it, for the hand-written backward passes that recompute or differentiate it.

StRA's recomputing nodes (the score branches, ``score_replay.py``; mode attention's gates,
``mode_gating.py``) run their norms in forward as the modules they are, and must in backward:

* normalise a recomputation with the same batch statistics, without updating the running
  statistics a second time;
* use the tensors the forward used, whatever happens to the module in between
  (``torch.func.functional_call`` swaps parameters only for the forward; ``eval()`` flips
  BatchNorm);
* differentiate the norm without autograd.

``NormReplay`` is taken when the forward runs and does those three.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def replayable_norm(norm: nn.Module) -> bool:
    """``NormReplay`` can replay ``norm`` exactly: a plain ``nn.BatchNorm2d`` (not synchronised, not frozen)."""
    return type(norm) is nn.BatchNorm2d


class NormReplay:
    """``norm`` as a replay needs it, taken before the forward runs: what a later change to the module
    (``eval()``, swapped parameters) must not alter.

    Called on the replay's input, it normalises as ``norm`` did (training mode or no running
    statistics: the batch's own statistics; eval mode: the running statistics of that time) and
    updates nothing.
    """

    def __init__(self, norm: nn.BatchNorm2d):
        self.batch_stats = norm.training or norm.running_mean is None
        self.running = None if self.batch_stats else (norm.running_mean.clone(), norm.running_var.clone())
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def params(self) -> List[torch.Tensor]:
        return [t for t in (self.weight, self.bias) if t is not None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.running if self.running is not None else (None, None)
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.batch_stats, 0., self.eps)

    def forward_saving(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[Tuple[torch.Tensor, torch.Tensor]]]:
        """``self(x)`` and what ``backward`` needs of it: the batch's mean and inverse standard deviation (float32
        or wider), computed by the same kernel as the forward's on CPU, or ``None`` with running statistics."""
        if not self.batch_stats:
            return self(x), None
        out, mean, invstd = torch.native_batch_norm(x, self.weight, self.bias, None, None, True, 0., self.eps)
        return out, (mean, invstd)

    def backward(self, grad: torch.Tensor, x: torch.Tensor, saved: Optional[Tuple[torch.Tensor, torch.Tensor]],
                 needs: Sequence[bool]) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The gradients of ``self(x)`` given ``grad``, without autograd: of ``x``, and of the weight and the bias
        where ``needs`` (two flags) says so and the norm has them (else ``None``). ``saved`` is what
        ``forward_saving(x)`` returned.

        Computes in ``x``'s dtype, as autograd's backward of the forward would: bf16 or fp16 input with float32
        parameters stays mixed (float32 statistics); the weight's and bias's gradients come in their own dtypes.

        Shapes:
            grad, x (B, C, H, W) -> (B, C, H, W), (C,), (C,)
        """
        mixed = x.dtype in (torch.bfloat16, torch.float16) and (self.weight is None or self.weight.dtype == torch.float32)
        stats_dtype = torch.float32 if mixed else x.dtype
        mean, invstd = (None, None) if saved is None else (t.to(stats_dtype) for t in saved)
        running_mean, running_var = (None, None) if saved is not None else (t.to(stats_dtype) for t in self.running)
        weight = None if self.weight is None else self.weight.to(stats_dtype)
        mask = [True, bool(needs[0]) and self.weight is not None, bool(needs[1]) and self.bias is not None]
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, running_mean, running_var, mean, invstd, self.batch_stats, self.eps, mask)
        if grad_weight is not None:
            grad_weight = grad_weight.to(self.weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(self.bias.dtype)
        return grad_x, grad_weight, grad_bias
