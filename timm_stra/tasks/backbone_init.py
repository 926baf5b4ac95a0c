"""``--backbone-init``: the pretrained weights a training run starts from, loaded by timm's own machinery.

The value is one of

* ``''``: none; the model keeps timm's random initialisation (the face and FER recipes);
* a pretrained tag of ``--model``: ``tv_in1k`` (the ReID recipe: torchvision's ImageNet ResNet-50,
  timm's ``resnet50.tv_in1k``, downloaded once into the Hugging Face cache) or ``a1_in1k`` (timm's
  RSB A1 ResNet-50); timm's names of these weights, ``resnet50.tv_in1k`` and ``resnet50.a1_in1k``,
  are accepted too;
* the path of a weights file: a timm ResNet-50 state dict of the model's depth (``.safetensors``, or a
  ``.pth`` / ``.bin`` read with ``weights_only=True``, here: timm's own reading of a file refuses
  pickled code only from timm 1.0.26 on).

Both are ``timm.create_model(model, pretrained=True, ...)``: a tag as ``pretrained_cfg``, a file's
tensors as ``pretrained_cfg_overlay=dict(state_dict=..., file=...)`` (the tensors are dropped from the
model's ``pretrained_cfg`` once loaded). The timm-stra models read them through their strict ImageNet
filter (``timm_stra.models.imagenet_init``): every backbone tensor must match the model, and only the
StRA operators, the neck and a classifier of another size start fresh. What cannot be loaded (no such
file, another architecture, the Hub offline with nothing cached, a model without ImageNet weights such
as the FER models) is a ``UsageError`` that says what is wrong and what to do.
"""
import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List

import timm
from timm.models import get_arch_pretrained_cfgs, parse_model_name, split_model_name_tag
from torch import nn

from ..checkpoint_file import CheckpointError, read_state_dict
from ..models import imagenet_init
from ..models.pretrained_errors import PretrainedWeightsError
from .usage import UsageError

TIMM_WEIGHTS = 'resnet50'  # timm's name of the ImageNet weights the tags stand for ('resnet50.tv_in1k')
_WEIGHT_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin', '.tar', '.ckpt')


@dataclass(frozen=True)
class BackboneInit:
    """A checked ``--backbone-init``: a pretrained ``tag`` or a weights ``file`` (neither: none)."""
    value: str = ''
    tag: str = ''
    file: str = ''

    def __bool__(self) -> bool:
        return bool(self.tag or self.file)


def pretrained_tags(model_name: str) -> List[str]:
    """The tags of ``model_name``'s architecture that have weights to load (e.g. ``['tv_in1k', 'a1_in1k']``)."""
    arch, _ = split_model_name_tag(model_name)
    return [name.partition('.')[2] for name, cfg in get_arch_pretrained_cfgs(arch).items()
            if name.partition('.')[2] and (cfg.hf_hub_id or cfg.url or cfg.file)]


def _what_to_give(tags: List[str]) -> str:
    tag = f"a pretrained tag of the model ({', '.join(tags)}), " if tags else ''
    return f"Give --backbone-init {tag}a weights file of the model's architecture, or '' to start from random weights."


def _looks_like_path(value: str) -> bool:
    return '/' in value or '\\' in value or value.endswith(_WEIGHT_SUFFIXES) or Path(value).exists()


def parse_backbone_init(value: str, model_name: str) -> BackboneInit:
    """Check ``--backbone-init value`` for ``--model model_name`` (see the module docstring).

    Raises:
        UsageError: no such file, a tag the model does not have, or a saved (``hf-hub:`` / ``local-dir:``) model.
    """
    if not value:
        return BackboneInit()
    source, model_id = parse_model_name(model_name)
    if source:
        raise UsageError(f'--backbone-init {value!r} with --model {model_name}: a saved model brings its own '
                         'architecture, and --backbone-init initialises a registered one. Give --model its '
                         "architecture name (e.g. stra_resnet50_reid), or --backbone-init ''.")
    tags = pretrained_tags(model_id)
    if _looks_like_path(value):
        path = Path(value).expanduser()
        if not path.is_file():
            what = 'is a folder, not a weights file' if path.is_dir() else 'does not exist'
            raise UsageError(f'--backbone-init {value}: {what}. {_what_to_give(tags)}')
        return BackboneInit(value, file=str(path))
    prefix, _, tag = value.rpartition('.')
    arch, _ = split_model_name_tag(model_id)
    if not tags:
        raise UsageError(f'--backbone-init {value!r}: {arch} has no pretrained weights to start from (it trains '
                         f'from scratch). {_what_to_give(tags)}')
    if prefix not in ('', TIMM_WEIGHTS, arch):
        raise UsageError(f'--backbone-init {value!r}: {prefix!r} is neither the model {arch} nor the {TIMM_WEIGHTS} '
                         f'weights its tags stand for. {_what_to_give(tags)}')
    if tag not in tags:
        raise UsageError(f'--backbone-init {value!r}: {arch} has no pretrained weights tagged {tag!r}. '
                         f'{_what_to_give(tags)}')
    return BackboneInit(value, tag=tag)


@contextlib.contextmanager
def _show_filter_line(enabled: bool) -> Iterator[None]:
    """Print the ImageNet filter's one INFO line (tensors loaded, dropped, fresh) on stderr, unless the
    logging configuration shows it already."""
    logger = logging.getLogger(imagenet_init.__name__)
    if not enabled or (logger.isEnabledFor(logging.INFO) and logger.hasHandlers()):
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def create_model(model_name: str, init: BackboneInit, verbose: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)`` with the pretrained weights of ``init``, if any.

    Args:
        init: from ``parse_backbone_init``.
        verbose: print where the weights came from and what was loaded (stderr).

    Raises:
        UsageError: the weights cannot be read or do not fit the model.
    """
    if not init:
        return timm.create_model(model_name, **kwargs)
    tags = pretrained_tags(model_name)
    if init.tag:
        source = dict(pretrained_cfg=init.tag)
    else:
        try:
            state_dict = read_state_dict(init.file)
        except (CheckpointError, OSError) as e:
            raise UsageError(f'--backbone-init {init.value!r}: {e} {_what_to_give(tags)}') from e
        # (timm's config copies the tensors while it builds the model: twice the file's size, for a moment)
        source = dict(pretrained_cfg_overlay=dict(state_dict=state_dict, file=init.file))
    try:
        with _show_filter_line(verbose):
            model = timm.create_model(model_name, pretrained=True, **source, **kwargs)
    except PretrainedWeightsError as e:  # the timm-stra models' own clear message
        raise UsageError(f'--backbone-init {init.value!r}: {e} {_what_to_give(tags)}') from e
    except (RuntimeError, OSError, ValueError) as e:  # other timm models: timm's own errors
        raise UsageError(f'--backbone-init {init.value!r}: cannot load its weights into {model_name} '
                         f'({type(e).__name__}: {e}). {_what_to_give(tags)}') from e
    model.pretrained_cfg.pop('state_dict', None)  # loaded: the config keeps where it came from, not the tensors
    if verbose:
        cfg = model.pretrained_cfg
        print(f"initialised {model_name} from {cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url')} "
              f'(--backbone-init {init.value})', file=sys.stderr)
    return model
