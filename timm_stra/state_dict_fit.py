"""How a state dict read from a file fails to fit a model's, in the words the error messages use.

Used where a file must fit a model key for key and shape for shape: a saved timm-stra model
(``models/imagenet_init.py``) and the authors' converted checkpoint (``convert/release.py``).
BatchNorm step counters (``num_batches_tracked``) are not weights: a file may lack them.
"""
from dataclasses import dataclass, field
from typing import Callable, List, Mapping

import torch

from .listing import shown_list

COUNTERS = 'num_batches_tracked'


def _always(key: str) -> bool:
    return True


def _same_shape(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
    return value.shape == target.shape


def shape_mismatch(key: str, value: torch.Tensor, target: torch.Tensor) -> str:
    """``'key (file shape) vs (model shape)'``, as ``KeyDifferences.mismatched`` lists it."""
    return f'{key} {tuple(value.shape)} vs {tuple(target.shape)}'


@dataclass
class KeyDifferences:
    """The keys by which a file's state dict differs from a model's (each list in the file's or model's order)."""
    unexpected: List[str] = field(default_factory=list)  # in the file, not in the model
    missing: List[str] = field(default_factory=list)  # in the model (BatchNorm counters aside), not in the file
    mismatched: List[str] = field(default_factory=list)  # 'key (file shape) vs (model shape)'
    other_kind: List[str] = field(default_factory=list)  # 'key int64 vs float32': integers for weights, or back

    def __bool__(self) -> bool:
        return bool(self.unexpected or self.missing or self.mismatched or self.other_kind)

    def describe(self) -> str:
        """``'keys the model does not have: a, b; model keys the file lacks: c; shapes that differ ...'``
        (weights before BatchNorm counters in the first list)."""
        unexpected = sorted(self.unexpected, key=lambda k: k.endswith(COUNTERS))
        return '; '.join(f'{what}: {shown_list(keys)}' for what, keys in (
            ('keys the model does not have', unexpected), ('model keys the file lacks', self.missing),
            ('shapes that differ (file vs model)', self.mismatched),
            ('integer tensors for floating-point ones or back (file vs model)', self.other_kind)) if keys)


def kind_mismatch(key: str, value: torch.Tensor, target: torch.Tensor) -> str:
    """``'key int64 vs float32'`` where a file tensor's kind (floating point or not) is not the model's, else ''.

    ``load_state_dict`` copies across kinds without a word: integer weights load as whole numbers (all zeros, for
    most), floats into an integer buffer are truncated. BatchNorm counters are not weights and are not compared.
    """
    if key.endswith(COUNTERS) or value.is_floating_point() == target.is_floating_point():
        return ''
    return f'{key} {str(value.dtype).replace("torch.", "")} vs {str(target.dtype).replace("torch.", "")}'


def key_differences(
        state_dict: Mapping[str, torch.Tensor],
        ours: Mapping[str, torch.Tensor],
        checked: Callable[[str], bool] = _always,
        fits: Callable[[str, torch.Tensor, torch.Tensor], bool] = _same_shape,
) -> KeyDifferences:
    """How ``state_dict`` (a file's) differs from ``ours`` (a model's) in the keys ``checked`` accepts: keys, shapes
    and the kind of number (``kind_mismatch``).

    Args:
        state_dict: the file's tensors by key.
        ours: the model's ``state_dict()``.
        checked: keys to compare (say, all but a classifier the caller replaces).
        fits: whether a file tensor may load into the model's tensor of the same key (default: same shape).
    """
    shared = [(k, v, ours[k]) for k, v in state_dict.items() if k in ours and checked(k)]
    return KeyDifferences(
        unexpected=[k for k in state_dict if k not in ours and checked(k)],
        missing=[k for k in ours if k not in state_dict and checked(k) and not k.endswith(COUNTERS)],
        mismatched=[shape_mismatch(k, v, t) for k, v, t in shared if not fits(k, v, t)],
        other_kind=[m for m in (kind_mismatch(k, v, t) for k, v, t in shared) if m])
