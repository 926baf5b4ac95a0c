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
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

# what NormReplay.backward needs from NormReplay.forward_saving: the kernel's index, its saved statistics
# and reserved space (as torch._batch_norm_impl_index returns them)
Saved = Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]


def replayable_norm(norm: nn.Module) -> bool:
    """``NormReplay`` can replay ``norm`` exactly: a plain ``nn.BatchNorm2d`` (not synchronised, not frozen) without
    hooks (``has_hooks``)."""
    return type(norm) is nn.BatchNorm2d and not has_hooks(norm)


_GLOBAL_HOOKS = ('_global_forward_hooks', '_global_forward_pre_hooks', '_global_backward_hooks',
                 '_global_backward_pre_hooks')


def has_hooks(*modules: nn.Module) -> bool:
    """Forward or backward hooks (pre-hooks too) on any of ``modules`` or on every module
    (``register_module_forward_hook``, ``register_module_full_backward_hook``, ...): a hand-written backward or a
    kernel, which does not call the modules, would neither run them nor see what they change."""
    if any(getattr(nn.modules.module, name, None) for name in _GLOBAL_HOOKS):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in modules)


class NormReplay:
    """``norm`` as a replay needs it, taken before the forward runs: what a later change to the module
    (``eval()``, swapped parameters) must not alter.

    ``forward_saving`` normalises a recomputation as ``norm`` did (training mode or no running
    statistics: the batch's own statistics; eval mode: the running statistics of that time) and
    updates nothing; ``backward`` differentiates it.
    """

    def __init__(self, norm: nn.BatchNorm2d):
        self.batch_stats = norm.training or norm.running_mean is None
        self.running = None if self.batch_stats else (norm.running_mean.clone(), norm.running_var.clone())
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        self.cudnn = torch.backends.cudnn.enabled  # as the forward's F.batch_norm reads it

    def forward_saving(self, x: torch.Tensor) -> Tuple[torch.Tensor, Saved]:
        """``self(x)`` and what ``backward`` needs of it, from the kernel ``F.batch_norm`` dispatches to (cuDNN's,
        on CUDA where it takes it) without updating any running statistics."""
        mean, var = self.running if self.running is not None else (None, None)
        out, save_mean, save_var, reserve, impl = torch._batch_norm_impl_index(
            x, self.weight, self.bias, mean, var, self.batch_stats, 0., self.eps, self.cudnn)
        return out, (impl, save_mean, save_var, reserve)

    def backward(self, grad: torch.Tensor, x: torch.Tensor, saved: Saved, needs: Sequence[bool]
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The gradients of ``self(x)`` given ``grad``, without autograd: of ``x``, and of the weight and the bias
        where ``needs`` (two flags) says so and the norm has them (else ``None``). ``saved`` is what
        ``forward_saving(x)`` returned.

        The kernel is the one autograd's backward of ``F.batch_norm`` takes, in the same dtypes.

        Shapes:
            grad, x (B, C, H, W) -> (B, C, H, W), (C,), (C,)
        """
        impl, save_mean, save_var, reserve = saved
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()  # what the forward's kernel read (cuDNN's backward requires it; a strided view here)
        mean, var = self.running if self.running is not None else (None, None)
        mask = [True, bool(needs[0]) and self.weight is not None, bool(needs[1]) and self.bias is not None]
        grad_x, grad_weight, grad_bias = torch.ops.aten._batch_norm_impl_index_backward(
            impl, x, grad, self.weight, mean, var, save_mean, save_var,
            self.batch_stats, self.eps, mask, reserve)
        return grad_x, (grad_weight if mask[1] else None), (grad_bias if mask[2] else None)

