"""The registered StRA-ResNet-50 variants and their ResNet-50 twins (SPEC 2).

=====================  ===========  ============================================
name                   input        head
=====================  ===========  ============================================
stra_resnet50          3x224x224    GAP, FC 2048 -> 1000 (ImageNet; twin: timm's resnet50)
stra_resnet50_reid     3x256x128    last stride 1; GAP, 2048 -> 512 embedding, FC -> 751 IDs
stra_resnet50_face     3x112x112    BN-Dropout-FC-BN 512-D embedding; ``img_size`` for 224x192
stra_resnet50_fer      1x44x44      small stem, StRA blocks without last 1x1; GAP, FC 512 -> 7
resnet50_reid          3x256x128    twin of stra_resnet50_reid
resnet50_face          3x112x112    twin of stra_resnet50_face
resnet50_fer           1x44x44      twin of stra_resnet50_fer (FC 2048 -> 7)
=====================  ===========  ============================================

The module is named ``resnet`` like timm's: ``timm.list_models(module='resnet')``
includes these models, and timm's own test-suite exercises their
``forward_intermediates`` as it does for every ResNet.
"""
from typing import Any, Dict, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .imagenet_init import imagenet_filter_fn
from .pretrained_errors import check_has_weights, pretrained_read_errors
from .stra_resnet import StRAResNet, feature_size, image_size, stage_blocks

PAPER = dict(
    paper_ids='arXiv:2106.06672',
    paper_name='Structure-Regularized Attention for Deformable Object Representation',
    origin_url='https://github.com/shenao-zhang/StRA',
)
FACE_MEAN = (0.5, 0.5, 0.5)  # (x - 127.5) / 128 on 0..255 pixels
FACE_STD = (128 / 255,) * 3


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0', **PAPER, **kwargs,
    }


# crop_mode: how timm's eval transform (create_transform(**resolve_data_config(model=...))) fits an image, as the
# task pipelines do (tasks/transforms.py): ReID and FER squashed to size, square faces a centre crop of the
# shorter-side resize, faces of another shape squashed (_face_size_overlay)
def _reid_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(num_classes=751, input_size=(3, 256, 128), pool_size=(16, 8), crop_pct=1.0, crop_mode='squash',
                **kwargs)


def _face_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(
        num_classes=0, input_size=(3, 112, 112), pool_size=(4, 4), crop_pct=1.0, crop_mode='center',
        mean=FACE_MEAN, std=FACE_STD, fixed_input_size=True, **kwargs)


def _fer_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(
        num_classes=7, input_size=(1, 44, 44), pool_size=(6, 6), crop_pct=1.0, crop_mode='squash',
        mean=(0.5,), std=(0.5,), **kwargs)


# ImageNet ResNet-50 initialisations (``pretrained=True``), read through ``imagenet_filter_fn``:
# tv_in1k (default) is torchvision's ResNet-50, the initialisation the paper used; a1_in1k is timm's RSB A1.
IMAGENET_INIT = dict(
    tv_in1k=dict(hf_hub_id='timm/resnet50.tv_in1k'),
    a1_in1k=dict(hf_hub_id='timm/resnet50.a1_in1k'),
)


def _tagged(name: str, cfg_fn) -> Dict[str, Dict[str, Any]]:
    return {f'{name}.{tag}': cfg_fn(**source) for tag, source in IMAGENET_INIT.items()}


default_cfgs = generate_default_cfgs({
    **_tagged('stra_resnet50', _cfg),
    **_tagged('stra_resnet50_reid', _reid_cfg),
    **_tagged('stra_resnet50_face', _face_cfg),
    'stra_resnet50_fer': _fer_cfg(),  # trained from scratch: no ImageNet initialisation (see _create)
    **_tagged('resnet50_reid', _reid_cfg),
    **_tagged('resnet50_face', _face_cfg),
    'resnet50_fer': _fer_cfg(),
})


def _face_size_overlay(size: Tuple[int, int]) -> Dict[str, Any]:
    """Keep ``pretrained_cfg`` (input and pool size, crop mode) true to a face model built for another (H, W) ``size``
    (``img_size`` as ``image_size`` gives it)."""
    return dict(input_size=(3, *size), pool_size=feature_size(size, 32),
                crop_mode='center' if size[0] == size[1] else 'squash')


FEATURE_LEVELS = 5  # feature_info: the stem's output and each of the four stages


def check_out_indices(out_indices: Any) -> None:
    """``ValueError`` unless ``out_indices`` (``features_only``) picks feature levels the models have (timm's error for
    another was a bare ``IndexError: list index out of range``): an int n takes the last n, a sequence names each."""
    if out_indices is None or isinstance(out_indices, int) and 1 <= out_indices <= FEATURE_LEVELS:
        return
    indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    if isinstance(out_indices, int) or not all(isinstance(i, int) and -FEATURE_LEVELS <= i < FEATURE_LEVELS
                                               for i in indices):
        raise ValueError(f'out_indices={out_indices!r}: these models have {FEATURE_LEVELS} feature levels (the stem '
                         f'and four stages): give indices from 0 to {FEATURE_LEVELS - 1} (or negative from the end), '
                         f'or a count of the last levels from 1 to {FEATURE_LEVELS}.')


# build arguments that are not part of the architecture (not recorded for config.json)
_RUNTIME_ARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'pretrained_model_args', 'device', 'dtype',
                 'features_only', 'out_indices', 'feature_cls')


def _create(variant: str, pretrained: bool, model_args: Dict[str, Any], **kwargs) -> StRAResNet:
    # sizes as Python ints (checked: a clear error before timm reads them; config.json records them)
    if kwargs.get('img_size') is not None:
        kwargs['img_size'] = image_size(kwargs['img_size'])
    if kwargs.get('layers') is not None:
        kwargs['layers'] = stage_blocks(kwargs['layers'])
    if kwargs.get('features_only'):
        check_out_indices(kwargs.get('out_indices'))
    overlay = kwargs.pop('pretrained_cfg_overlay', None)
    if model_args.get('head') == 'face' and kwargs.get('img_size') is not None:
        overlay = {**_face_size_overlay(kwargs['img_size']), **(overlay or {})}
    if pretrained:
        check_has_weights(variant, kwargs.get('pretrained_cfg'), overlay)
    with pretrained_read_errors(variant, pretrained, kwargs.get('pretrained_cfg'), overlay, kwargs.get('cache_dir')):
        model = build_model_with_cfg(
            StRAResNet, variant, pretrained, pretrained_cfg_overlay=overlay,
            pretrained_filter_fn=imagenet_filter_fn, **dict(model_args, **kwargs))
    # Record the caller's architecture arguments the way timm.create_model does, so that save_for_hf
    # writes them to config.json also for models built by calling the entrypoint directly.
    model._model_args = {**getattr(model, '_model_args', {}),
                         **{k: v for k, v in kwargs.items() if k not in _RUNTIME_ARGS}}
    return model


_REID = dict(last_stride=1, head='reid')
_FACE = dict(head='face', drop_rate=0.4)
_FER = dict(layers=(3, 3, 3, 3), stem='small')


@register_model
def stra_resnet50(pretrained: bool = False, **kwargs) -> StRAResNet:
    """StRA-ResNet-50 for ImageNet classification (224x224, StRA last stage with stride 2)."""
    return _create('stra_resnet50', pretrained, dict(), **kwargs)


@register_model
def stra_resnet50_reid(pretrained: bool = False, **kwargs) -> StRAResNet:
    """StRA-ResNet-50 for person ReID (256x128, last stride 1, 512-D embedding, 751 Market-1501 IDs)."""
    return _create('stra_resnet50_reid', pretrained, dict(_REID), **kwargs)


@register_model
def stra_resnet50_face(pretrained: bool = False, **kwargs) -> StRAResNet:
    """StRA-ResNet-50 for face recognition (112x112, BN-Dropout-FC-BN 512-D embedding; ``img_size`` for others)."""
    return _create('stra_resnet50_face', pretrained, dict(_FACE), **kwargs)


@register_model
def stra_resnet50_fer(pretrained: bool = False, **kwargs) -> StRAResNet:
    """StRA-ResNet-50 for facial expressions (44x44 grayscale, small stem, StRA blocks without last 1x1, 7 classes)."""
    return _create('stra_resnet50_fer', pretrained, dict(_FER, fuse_last=False), **kwargs)


@register_model
def resnet50_reid(pretrained: bool = False, **kwargs) -> StRAResNet:
    """ResNet-50 twin of ``stra_resnet50_reid`` (the paper's ReID baseline)."""
    return _create('resnet50_reid', pretrained, dict(_REID, stra=False), **kwargs)


@register_model
def resnet50_face(pretrained: bool = False, **kwargs) -> StRAResNet:
    """ResNet-50 twin of ``stra_resnet50_face`` (the paper's face baseline)."""
    return _create('resnet50_face', pretrained, dict(_FACE, stra=False), **kwargs)


@register_model
def resnet50_fer(pretrained: bool = False, **kwargs) -> StRAResNet:
    """ResNet-50 twin of ``stra_resnet50_fer`` (the paper's FER baseline)."""
    return _create('resnet50_fer', pretrained, dict(_FER, stra=False), **kwargs)
