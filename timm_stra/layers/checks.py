"""Input validation shared by the StRA layers.

The checks are registered as fx leaf functions so that models stay traceable by
``torch.fx`` (a traced graph calls them, it does not trace into them) and are
written in the TorchScript subset so that models stay scriptable.
"""
import numbers

import torch
from timm.layers import register_notrace_function


def check_int(value, argument: str, what: str) -> int:
    """``value`` as a Python int (NumPy integers too: a config may hold them), or a ``TypeError`` naming
    ``argument`` (a string or a tuple failed in a comparison that named neither)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'{what}: {argument} must be an integer, got {value!r} ({type(value).__name__}).')
    return int(value)


def check_divisible(channels: int, groups: int, what: str, noun: str = 'modes (groups)',
                    argument: str = 'groups') -> None:
    """Raise a ``ValueError`` unless ``channels`` splits into ``groups`` equal groups (called ``noun`` in the
    message, set by the layer's ``argument``)."""
    if groups < 1:
        raise ValueError(f'{what}: the number of {noun} must be >= 1, got {argument}={groups}.')
    if channels % groups != 0:
        raise ValueError(
            f'{what}: {channels} channels cannot be split into {groups} {noun}; '
            f'choose {argument} that divide {channels}, e.g. one of '
            f'{[g for g in range(1, min(channels, 64) + 1) if channels % g == 0]}.')


def check_choice(value: str, choices, what: str) -> None:
    """Raise a ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f'Unknown {what} {value!r}; expected one of {sorted(choices)}.')


@register_notrace_function
def check_feature_map(x: torch.Tensor, channels: int, name: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is a (B, ``channels``, H, W) tensor."""
    if x.dim() != 4:
        raise ValueError(
            '{} expects a (B, C, H, W) feature map, got a tensor with {} dimensions of shape {}.'.format(
                name, x.dim(), x.shape))
    if x.shape[1] != channels:
        raise ValueError(
            '{} was built for {} input channels, got a feature map with {} channels (shape {}).'.format(
                name, channels, x.shape[1], x.shape))


@register_notrace_function
def check_per_mode_map(x: torch.Tensor, groups: int, channels: int, name: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is a (B, ``groups``, H, W, ``channels`` / ``groups``) per-mode map."""
    if x.dim() != 5 or x.shape[1] != groups or x.shape[4] * groups != channels:
        raise ValueError(
            '{} (per_mode) expects a (B, G, H, W, C / G) = (B, {}, H, W, {}) map, got shape {}.'.format(
                name, groups, channels // groups, x.shape))
