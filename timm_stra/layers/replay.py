"""Keep less for backward: replay a small sub-network in backward instead of keeping its insides.

``replayed(run, x, params)`` computes ``run(x, False)`` without keeping anything but ``x``
(the parameters live on anyway); backward runs ``run(x, True)`` again with autograd on and
back-propagates through that. It is gradient checkpointing for one branch, with what
StRA's branches need from it:

* BatchNorm in training mode must normalise the replay with the same batch statistics but
  must not update its running statistics a second time: with its ``replay`` flag set,
  ``run`` calls a ``NormReplay`` (below) instead of the module, which leaves the module's
  buffers alone.
* The replay must compute with the tensors the forward used, whatever happens to the
  module in between (``torch.func.functional_call`` swaps parameters only for the
  forward; ``eval()`` flips BatchNorm): ``run`` takes them when the forward runs, and
  ``params`` lists them.
* ``x`` is saved with ``save_for_backward``, so saved-tensor hooks around the call see it
  (``recompute_saved`` can then drop it too).

Autocast is replayed as it was in forward. Double backward is refused (an error).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .autocast import AutocastState


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

    def backward(self, grad: torch.Tensor, x: torch.Tensor, needs: Sequence[bool]
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The gradients of ``self(x)`` given ``grad``, without autograd: of ``x``, and of the weight and the bias
        where ``needs`` (two flags) says so and the norm has them (else ``None``).

        Computes in ``x``'s dtype; the weight's and bias's gradients come in their own.

        Shapes:
            grad, x (B, C, H, W) -> (B, C, H, W), (C,), (C,)
        """
        if self.batch_stats:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            invstd = (var + self.eps).rsqrt()
            running_mean = running_var = None
        else:
            mean = invstd = None
            running_mean, running_var = (t.to(x.dtype) for t in self.running)
        weight = None if self.weight is None else self.weight.to(x.dtype)
        mask = [True, bool(needs[0]) and self.weight is not None, bool(needs[1]) and self.bias is not None]
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, running_mean, running_var, mean, invstd, self.batch_stats, self.eps, mask)
        if grad_weight is not None:
            grad_weight = grad_weight.to(self.weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(self.bias.dtype)
        return grad_x, grad_weight, grad_bias


class _Replay(torch.autograd.Function):
    """Keeps ``x`` (saved) and the parameters (held: they live on in the module anyway)."""

    @staticmethod
    def forward(ctx, run: Callable[[torch.Tensor, bool], torch.Tensor], x: torch.Tensor, *params: torch.Tensor):
        ctx.run = run
        ctx.params = params
        ctx.autocast = AutocastState(x.device.type)
        ctx.save_for_backward(x)
        return run(x, False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]  # x, *params
        with torch.enable_grad(), ctx.autocast():
            x = x.detach().requires_grad_(needs[0])
            out = ctx.run(x, True)
        inputs: List[torch.Tensor] = [t for t, need in zip((x, *ctx.params), needs) if need]
        grads = iter(torch.autograd.grad(out, inputs, grad_out, allow_unused=True))
        return (None, *(next(grads) if need else None for need in needs))


def replayed(run: Callable[[torch.Tensor, bool], torch.Tensor], x: torch.Tensor,
             params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``run(x, False)``, keeping only ``x`` for backward, which replays ``run(x, True)``.

    Args:
        run: the branch; its second argument is the replay flag (see ``NormReplay``).
        x: its input.
        params: every tensor ``run`` uses that may need a gradient: the parameter tensors of this
            forward, which the replay must use too.
    """
    return _Replay.apply(run, x, *params)
