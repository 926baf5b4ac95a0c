"""Keep a cheap tensor out of what autograd saves: recompute it when backward asks for it.

``recompute_saved(tensor, recompute)`` is a context for the forward of the ops that read
``tensor``. Whatever they save for backward that is ``tensor`` or a view of it is replaced by
a small handle (unless it was written to in place since the context began); the first handle
backward unpacks calls ``recompute()`` (without autograd, under the forward's autocast
setting), later ones reuse that result, and the last one lets it go. Every other saved
tensor is kept, with autograd's check that nothing wrote to it in place before backward.
StRA uses it for the output of local attention, which every part of mode attention keeps
(the mask branch, the pooling and the affinity products) and which one product rebuilds
from what local attention keeps anyway.

These are saved-tensor hooks, which would take the place of any set outside the context
(``torch.utils.checkpoint``, ``save_on_cpu``): ``outer_hooks_active()`` tells callers to do
without them then. Double backward is not supported.
"""
from typing import Callable, Optional

import torch

from .autocast import AutocastState


def outer_hooks_active() -> bool:
    """Whether saved-tensor hooks are already set (non-reentrant checkpointing, ``save_on_cpu``, ...)."""
    top = getattr(torch._C._autograd, '_top_saved_tensors_default_hooks', None)  # no public query exists
    return top is not None and top(False) is not None


def will_run(node) -> bool:
    """Whether the backward pass under way will run the autograd node ``node`` (yes, where torch cannot tell;
    no for ``None``)."""
    if node is None:
        return False
    will_execute = getattr(torch._C, '_will_engine_execute_node', None)  # no public query exists
    if will_execute is None:
        return True
    try:
        return will_execute(node)
    except RuntimeError:  # not inside a backward pass
        return True


class _Recomputed:
    """The recomputed tensor, shared by the handles of one context, released after the last unpack."""

    def __init__(self, recompute: Callable[[], torch.Tensor], device_type: str):
        self.recompute = recompute
        self.autocast = AutocastState(device_type)
        self.handles = 0
        self.value: Optional[torch.Tensor] = None

    def unpack(self, size, stride, offset) -> torch.Tensor:
        value = self.value
        if value is None:
            with torch.no_grad(), self.autocast():
                value = self.recompute()
        self.handles -= 1
        self.value = value if self.handles > 0 else None
        return value.as_strided(size, stride, offset)


class recompute_saved(torch.autograd.graph.saved_tensors_hooks):
    """Within the context, autograd saves a handle instead of ``tensor`` or any view of it.

    Args:
        tensor: alive for the whole context; every tensor sharing its storage counts as it.
        recompute: returns a tensor of the same values, size, strides and storage offset, in a
            storage of the same size. It runs in backward and should read only what is kept anyway.
    """

    def __init__(self, tensor: torch.Tensor, recompute: Callable[[], torch.Tensor]):
        storage = tensor.untyped_storage()
        # storage identity: the tensor is alive throughout, so no other tensor can share this address
        key = (storage.data_ptr(), storage.nbytes(), tensor.device, tensor.dtype)
        version = tensor._version  # (shared with its views)
        recomputed = _Recomputed(recompute, tensor.device.type)

        def pack(t: torch.Tensor):
            s = t.untyped_storage()
            # kept as it is, too, once written to in place within the context: recompute() gives the values before
            if (s.data_ptr(), s.nbytes(), t.device, t.dtype) != key or t._version != version:
                # detached where it has a grad_fn: an op's own output, kept with its grad_fn, would close a
                # cycle gc cannot see (a forward that never gets a backward would then never be freed); the
                # detached tensor shares the version counter, whose value now backward checks as autograd would
                return (t if t.grad_fn is None else t.detach()), t._version
            recomputed.handles += 1
            return recomputed, t.size(), t.stride(), t.storage_offset()

        def unpack(packed):
            if len(packed) == 2:
                return _unchanged(*packed)
            holder, size, stride, offset = packed
            return holder.unpack(size, stride, offset)

        super().__init__(pack, unpack)


def _unchanged(t: torch.Tensor, version: int) -> torch.Tensor:
    """``t``, if nothing has written to it in place since it was saved at ``version`` (the check autograd makes
    of the tensors it saves, which saved-tensor hooks would otherwise skip)."""
    if t._version != version:
        raise RuntimeError(
            f'one of the variables needed for gradient computation has been modified by an inplace operation: '
            f'a saved tensor of shape {list(t.shape)} is at version {t._version}; expected version {version} '
            f'instead (timm_stra recompute_saved).')
    return t
