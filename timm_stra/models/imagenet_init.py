"""Initialise a StRA ResNet-50 (or its twin) from timm's ImageNet ResNet-50 weights.

``imagenet_filter_fn`` is the ``pretrained_filter_fn`` that timm's
``load_pretrained`` applies to ``resnet50.tv_in1k`` / ``resnet50.a1_in1k``. It
returns a complete state dict for the model: every tensor of the file whose name
and shape match is loaded, and exactly these groups keep the model's own fresh
initialisation:

* the StRA operators of the last stage (``layer4.N.conv2.*``), which replace the
  file's 3x3 convolutions ``layer4.N.conv2.weight`` (dropped; the ``conv`` ablation,
  whose local operator is that 3x3 conv, loads it as ``layer4.N.conv2.local.weight``);
* the embedding neck (``neck.*``) of the ReID and face heads;
* the classifier ``fc`` when the model's classes are not its pretrained config's
  (``num_classes``: timm's ``load_pretrained`` then drops the file's ``fc`` whatever its shape)
  or its shape differs from the file's (the file's ``fc`` is then dropped).

The operators and the neck start fresh because an ImageNet file has none: a file
that does have some (a saved timm-stra model) must match them in shape, as
everything but the classifier must. Anything else (a key the model lacks, a model
key the file lacks outside these groups, a shape that differs anywhere but in
``fc``) means the file is not an ImageNet ResNet-50 for this model: the filter
raises and names the keys, it never drops them silently.

A saved timm-stra model (``hf-hub:`` / ``local-dir:``) passes through the same filter unchanged, once checked to
fit the model in every key and shape but a classifier the caller asked to replace (``_saved_model_state``).
"""
import logging
import re
from typing import Dict, Mapping

import torch
from torch import nn

from ..state_dict_fit import COUNTERS, KeyDifferences, key_differences, kind_mismatch, shape_mismatch

_logger = logging.getLogger(__name__)

_OPERATOR = re.compile(r'^layer4\.\d+\.conv2\.\w+\.')  # inside a StRA operator (not a plain conv2)
_REPLACED_CONV = re.compile(r'^(layer4\.\d+)\.conv2\.weight$')  # the 3x3 conv a StRA operator replaces


class IncompatibleWeightsError(ValueError):
    """The pretrained file does not fit the model outside its freshly initialised groups."""


def _group(key: str) -> str:
    """Name of the freshly initialised group a model key belongs to, or '' for backbone keys."""
    if _OPERATOR.match(key):
        return 'StRA operators'
    if key.startswith('neck.'):
        return 'neck'
    if key.startswith('fc.'):
        return 'classifier'
    return ''


def _first_conv_weight(model: nn.Module) -> str:
    """State-dict key of the model's input conv weight."""
    return f"{getattr(model, 'pretrained_cfg', {}).get('first_conv') or 'conv1'}.weight"


def _only_in_chans_differ(key: str, value: torch.Tensor, target: torch.Tensor, first_conv: str) -> bool:
    """Whether ``value`` is the input conv's weight for other input channels than ``target``'s, which timm's
    ``load_pretrained`` adapts to ``in_chans``."""
    return (key == first_conv and value.dim() == 4 and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:])


def imagenet_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """ImageNet ResNet-50 state dict -> complete state dict for ``model`` (see the module docstring).

    The input conv is passed through when only its input channels differ, so that
    timm's ``load_pretrained`` adapts it to ``in_chans``. Weights of a saved timm-stra
    model (``hf-hub:`` / ``local-dir:`` sources) pass through unchanged once they are checked
    to fit the model in full (``_saved_model_state``).

    Raises:
        IncompatibleWeightsError: the file does not fit the model outside the freshly initialised groups.
    """
    cfg = getattr(model, 'pretrained_cfg', {})
    if cfg.get('source') in ('hf-hub', 'local-dir'):
        return _saved_model_state(state_dict, model)
    ours = model.state_dict()
    # timm's load_pretrained drops the file's classifier for a model of other classes than its config's
    classifier_loads = getattr(model, 'num_classes', None) == cfg.get('num_classes')
    operator_blocks = {k.split('.conv2.')[0] for k in ours if _OPERATOR.match(k)}
    first_conv = _first_conv_weight(model)
    out: Dict[str, torch.Tensor] = {}
    loaded = 0
    problems = KeyDifferences()
    dropped = {'replaced 3x3 convs': 0, "the file's classifier": 0}
    for key, value in state_dict.items():
        if key not in ours:
            replaced = _REPLACED_CONV.match(key)
            if replaced and replaced.group(1) in operator_blocks:
                as_local = f'{replaced.group(1)}.conv2.local.weight'  # the 'conv' ablation keeps the 3x3 conv
                if as_local in ours and ours[as_local].shape == value.shape:
                    out[as_local] = value
                    loaded += 1
                else:
                    dropped['replaced 3x3 convs'] += 1
            elif _group(key) == 'classifier':
                dropped["the file's classifier"] += 1
            else:
                problems.unexpected.append(key)
            continue
        target = ours[key]
        other_kind = kind_mismatch(key, value, target)
        if other_kind:
            problems.other_kind.append(other_kind)
        elif _group(key) == 'classifier' and not (classifier_loads and value.shape == target.shape):
            dropped["the file's classifier"] += 1  # e.g. a 751-ID classifier instead of the 1000-way one: fresh
        elif value.shape == target.shape:
            out[key] = value
            loaded += key.split('.')[-1] != COUNTERS
        elif _only_in_chans_differ(key, value, target, first_conv):
            out[key] = value  # timm's load_pretrained adapts it
            loaded += 1
        else:
            problems.mismatched.append(shape_mismatch(key, value, target))
    fresh = {}
    for key, value in ours.items():
        if key in out:
            continue
        group = _group(key)
        if group or key.endswith(COUNTERS):
            out[key] = value
            if group:
                fresh.setdefault(group, 0)
                fresh[group] += 1
        elif key not in state_dict:  # (a mis-shaped key is reported as such)
            problems.missing.append(key)
    if problems:
        raise IncompatibleWeightsError(
            f'not an ImageNet ResNet-50 for this model; {problems.describe()}. Use the pretrained tags tv_in1k or '
            'a1_in1k (timm/resnet50.*), or pretrained=False.')
    name = cfg.get('architecture', type(model).__name__)
    _logger.info('%s: loaded %d ImageNet ResNet-50 tensors, dropped %d (%s); freshly initialised: %s', name, loaded,
                 sum(dropped.values()), ', '.join(f'{what}: {n}' for what, n in dropped.items() if n) or 'none',
                 ', '.join(f'{g} ({n} tensors)' for g, n in fresh.items()) or 'nothing')
    return out


def _saved_model_state(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """A saved timm-stra model's weights, unchanged, once checked to fit ``model`` in every key and shape but the
    classifier's when the model asks for another number of classes, and the input channels of the first conv
    (which timm adapts to ``in_chans``).

    timm loads such a file strictly, except when ``num_classes`` differs from the saved one: it then drops the
    classifier and loads the rest leniently, which would leave any other key the file lacks (say, of an operator
    built with other arguments) at its fresh initialisation without a word.

    Raises:
        IncompatibleWeightsError: a key or shape outside the classifier differs.
    """
    cfg = getattr(model, 'pretrained_cfg', {})
    new_classifier = getattr(model, 'num_classes', None) != cfg.get('num_classes')
    first_conv = _first_conv_weight(model)

    def checked(key: str) -> bool:
        return not (new_classifier and _group(key) == 'classifier')

    def fits(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
        return value.shape == target.shape or _only_in_chans_differ(key, value, target, first_conv)
    problems = key_differences(state_dict, model.state_dict(), checked, fits)
    if problems:
        raise IncompatibleWeightsError(
            f'a saved model built with other arguments than this one; {problems.describe()}. Build it with the '
            "arguments it was saved with (those in its config.json, which timm.create_model('hf-hub:...') and "
            "timm.create_model('local-dir:...') pass on) and change only num_classes, or use pretrained=False.")
    return dict(state_dict)
