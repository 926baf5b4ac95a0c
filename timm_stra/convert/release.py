"""Convert the authors' released checkpoint (torchreid ``.pth.tar``) into a Hub-ready timm folder.

The file is read with ``weights_only=True`` (a pickle that would run code is
refused), unwrapped from its ``state_dict`` and stripped of ``module.`` prefixes;
every key is mapped by ``convert_official_state_dict`` (a key it cannot map is an
error) and the result must load strictly into ``stra_resnet50_reid``. The folder
(``config.json``, ``model.safetensors``, ``README.md``) is written atomically and
loads with ``timm.create_model('local-dir:<folder>', pretrained=True)``.
"""
import re
from pathlib import Path
from typing import Dict, Union

import timm
import torch
from torch import nn

from ..atomic import refuse_existing
from ..checkpoint_file import CheckpointError, read_state_dict
from ..hub import save_for_hf
from ..listing import shown_list
from ..state_dict_fit import COUNTERS, key_differences
from .official import convert_official_state_dict

PathLike = Union[str, Path]
_PLAIN_CONV2 = re.compile(r'^layer4\.\d+\.conv2\.weight$')
WEIGHTS_NOTE = ("converted from the authors' released checkpoint (shenao-zhang/StRA, Market-1501; "
                'they report 84.2 mAP, 94.0 Rank-1) with timm-stra convert; their repository states no licence '
                'for it')
TWIN_WEIGHTS_NOTE = ("converted with timm-stra convert from a checkpoint in the layout of the authors' code "
                     '(shenao-zhang/StRA), with plain 3x3 convolutions in the last stage')


def build_converted_model(state_dict: Dict[str, torch.Tensor], keep_classifier: bool, source: str) -> nn.Module:
    """The timm-stra ReID model holding an already converted state dict (strict load).

    ``stra_resnet50_reid``, or its twin ``resnet50_reid`` when the last stage has plain
    3x3 convs. Without ``keep_classifier`` the ID classifier is dropped and the model
    returns the 512-D embedding.
    """
    variant = 'resnet50_reid' if any(_PLAIN_CONV2.match(k) for k in state_dict) else 'stra_resnet50_reid'
    if keep_classifier:
        if 'fc.weight' not in state_dict:
            raise CheckpointError(f'{source}: has no ID classifier to keep; convert without --keep-classifier.')
        num_classes = state_dict['fc.weight'].shape[0]
    else:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('fc.')}
        num_classes = 0
    model = timm.create_model(variant, num_classes=num_classes, pretrained_cfg_overlay=dict(tag='official'))
    ours = model.state_dict()
    problems = key_differences(state_dict, ours)
    if problems:
        raise CheckpointError(
            f'{source}: its keys are official names but it is not the official {variant} '
            f'(another architecture or a part of one): {problems.describe()}.')
    broken = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # a model of them gives NaN for every image
        raise CheckpointError(f'{source}: holds values that are not finite (NaN or inf) in {shown_list(broken)}: '
                              'the training run that wrote it diverged, or the file is damaged.')
    # BatchNorm step counters are not weights: a re-saved or stripped copy may lack them
    model.load_state_dict({**{k: v for k, v in ours.items() if k.endswith(COUNTERS)}, **state_dict}, strict=True)
    return model.eval()


def convert_checkpoint(checkpoint: PathLike, out_dir: PathLike, keep_classifier: bool = False) -> Path:
    """Official ``.pth.tar`` -> Hub-ready folder ``out_dir`` (which must not exist yet).

    Raises:
        FileNotFoundError: no checkpoint file.
        FileExistsError: ``out_dir`` exists and is not empty.
        CheckpointError: refused, unreadable, or not the authors' model; nothing is written.
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir)  # before reading the checkpoint; save_for_hf checks again as it writes
    state_dict = read_state_dict(checkpoint)
    try:
        converted = convert_official_state_dict(state_dict)
    except ValueError as e:
        raise CheckpointError(f'{checkpoint}: {e}') from e
    model = build_converted_model(converted, keep_classifier, str(checkpoint))
    note = WEIGHTS_NOTE if model.pretrained_cfg['architecture'] == 'stra_resnet50_reid' else TWIN_WEIGHTS_NOTE
    return save_for_hf(model, out_dir, weights=note, license='other')
