"""The hand-written backward passes are first-order: a request for second derivatives is refused.

StRA's fast operators differentiate themselves without autograd (``_LocalAttend``, ``_ScoreReplay``,
``_ModeGating``). Autograd asks a backward for a differentiable result by running it with grad mode on
(``create_graph=True``: a gradient penalty, meta-learning). ``once_differentiable`` would answer with
an error node that only ``.backward()`` through it reaches: ``torch.autograd.grad(penalty, x)`` skips
that node and returns a partial or no gradient without a word. ``first_order_only`` raises at once
instead, whatever is asked for; the reference operators (``reference=True``) are twice differentiable.
"""
import functools
from typing import Callable

import torch


def first_order_only(backward: Callable) -> Callable:
    """Decorate an ``autograd.Function``'s backward: a ``RuntimeError`` when it runs with grad mode on."""
    @functools.wraps(backward)
    def first_order_backward(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                f'{backward.__qualname__} is first-order only: StRA\'s fast operators have no second derivatives '
                '(create_graph=True, e.g. a gradient penalty). Build the model with reference=True for them.')
        return backward(ctx, *grads)
    return first_order_backward
