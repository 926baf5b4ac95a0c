"""Autocast in hand-written backward passes, which autograd runs outside the forward's autocast state.

A backward may still run inside an autocast region (``loss.backward()`` called under
``torch.autocast``): the custom ``autograd.Function`` backward passes and replays here then
set autocast themselves rather than inherit it.
"""
import contextlib
import functools
from typing import Callable, ContextManager

import torch


class AutocastState:
    """The autocast setting of ``device_type`` at construction, to re-enter later."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        try:
            self.enabled = torch.is_autocast_enabled(device_type)
            self.dtype = torch.get_autocast_dtype(device_type)
        except RuntimeError:  # a device without autocast (meta)
            self.enabled, self.dtype = None, None

    def __call__(self) -> ContextManager:
        """The setting, on or off whatever the caller has set, for a device with autocast."""
        if self.enabled is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def autocast_off(device_type: str) -> ContextManager:
    """Autocast off for ``device_type`` (a no-op on devices without autocast)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def without_autocast(backward: Callable) -> Callable:
    """Decorate an ``autograd.Function.backward`` to run with autocast off on its gradient's device.

    Such a backward computes in the dtypes its forward recorded, whatever region it is called in.
    """
    @functools.wraps(backward)
    def run(ctx, *grads):
        device_type = next(g.device.type for g in grads if g is not None)
        with autocast_off(device_type):
            return backward(ctx, *grads)

    return run
