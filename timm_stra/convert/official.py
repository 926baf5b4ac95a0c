"""Map the authors' state-dict names (``shenao-zhang/StRA``, torchreid layout) to timm-stra's.

The official ReID model (``StRAResNet`` in ``models/StRARes.py``) shares the names
of torchvision's ResNet-50 for the stem and stages, which are timm's too; only
the StRA operators (``layerN.M.conv2.*``), the embedding (``global_avg_pool``)
and the classifier differ. The mapping is exact: every official key maps to one
of ours, and a key it does not know is an error, never dropped.
"""
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..listing import shown_list

# official name inside an operator -> ours (relative to the operator, i.e. to ``conv2``)
OPERATOR_RENAMES: Tuple[Tuple[str, str], ...] = (
    ('mask_conv.0.', 'local.score.conv1.'),
    ('mask_conv.1.', 'local.score.bn1.'),
    ('mask_conv.3.', 'local.score.conv2.'),
    ('mask_conv.4.', 'local.score.bn2.'),
    ('value_conv.', 'local.value.'),
    ('moe.gap_weight.0.', 'mode.mask.conv1.'),
    ('moe.gap_weight.1.', 'mode.mask.bn1.'),
    ('moe.gap_weight.3.', 'mode.mask.conv2.'),
    ('moe.gap_weight.4.', 'mode.mask.bn2.'),
    ('moe.bn.', 'mode.gate_norm.'),
    ('moe.bn2.', 'mode.interact_norm.'),
)
# official name outside the operators -> ours
HEAD_RENAMES: Tuple[Tuple[str, str], ...] = (
    ('global_avg_pool.1.', 'neck.fc.'),
    ('global_avg_pool.2.', 'neck.norm.'),
    ('classifier.', 'fc.'),
)
# stem and stage names the official model shares with timm's ResNet
SHARED_PREFIXES = ('conv1.', 'bn1.', 'layer1.', 'layer2.', 'layer3.', 'layer4.')


def _rename(key: str, renames: Tuple[Tuple[str, str], ...]) -> Optional[str]:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def convert_official_key(key: str, operator_only: bool = False) -> Optional[str]:
    """Our name for one official key, or None when the key is not part of the official layout."""
    if operator_only:
        return _rename(key, OPERATOR_RENAMES)
    head = _rename(key, HEAD_RENAMES)
    if head is not None:
        return head
    if '.conv2.' in key and key.startswith('layer4.'):
        block, _, rest = key.partition('.conv2.')
        op = _rename(rest, OPERATOR_RENAMES)
        if op is not None:
            return f'{block}.conv2.{op}'
        # a plain conv2 (ResNet twin) keeps its name
        return key if rest in ('weight', 'bias') else None
    if key.startswith(SHARED_PREFIXES):
        return key
    return None


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that (Distributed)DataParallel checkpoints carry."""
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official StRA state dict -> timm-stra state dict.

    Accepts the whole ReID model (``stra_resnet50_reid``; ``module.`` prefixes are
    dropped) or a single operator (keys relative to ``conv2``, e.g.
    ``mask_conv.0.weight``; loads into ``StRAttention``). The embedding's 1x1 conv
    becomes a Linear weight.

    Raises:
        ValueError: naming the keys that are not part of the official layout.
    """
    state_dict = _strip_module_prefix(state_dict)
    operator_only = all(_rename(k, OPERATOR_RENAMES) is not None for k in state_dict)
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        new_key = convert_official_key(key, operator_only)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key == 'neck.fc.weight' and value.dim() == 4:
            value = value.flatten(1)  # 1x1 conv on pooled features == Linear
        out[new_key] = value
    if unknown:
        plain = ('This is the state dict of a plain ResNet-50 (its classifier is fc.*): load it with '
                 "timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...)) or --backbone-init, "
                 'not convert. '
                 if {k.split('.')[0] for k in unknown} == {'fc'} else '')
        raise ValueError(
            f'Not an official StRA state dict: no mapping for {shown_list(unknown, 8)}. {plain}Expected the keys of '
            "the authors' stru_resnet50 (torchreid) model, or of a single StRA operator (mask_conv.*, value_conv.*, "
            'moe.*).')
    return out
