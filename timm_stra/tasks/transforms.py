"""Image pipelines per task, from timm's transforms and the model's data config (SPEC 4).

* ReID (256x128): resize, random horizontal flip, random crop after 10-pixel zero padding,
  random erasing (timm's ``RandomErasing``, erased pixels set to the mean).
* face (112x112): shorter side resized and centre crop, random horizontal flip.
* FER (44x44 grey): resize, random horizontal flip.

Evaluation is timm's ``create_transform(is_training=False)`` with ``crop_pct=1``.
"""
from typing import Any, Callable, Dict, Sequence

from torchvision import transforms
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybeToTensor, str_to_interp_mode

from .usage import UsageError


TASK_CHANNELS = {'reid': 3, 'face': 3, 'fer': 1}  # colour person and face crops; FER2013's grey faces


def check_channels(task: str, data_config: Dict[str, Any]) -> None:
    """Raise ``UsageError`` unless the model's input channels (``data_config['input_size'][0]``) are the task's
    images' (a model of another task failed inside the normalisation or the first convolution)."""
    channels, wanted = data_config['input_size'][0], TASK_CHANNELS[task]
    if channels != wanted:
        images = 'grey (1 channel)' if wanted == 1 else 'colour (3 channels)'
        raise UsageError(f'the model takes {channels}-channel input (input_size {tuple(data_config["input_size"])});'
                         f' {task} images are {images}: give a model built for them (in_chans={wanted}, as the '
                         f'{task} models are).')


def _crop_mode(task: str, size: Sequence[int]) -> str:
    # face crops are square centre crops of the shorter-side resize; the rest are squashed to size
    return 'center' if task == 'face' and size[0] == size[1] else 'squash'


def eval_transform(task: str, data_config: Dict[str, Any]) -> Callable:
    """Deterministic PIL -> (C, H, W) normalised tensor for evaluation (``UsageError``: see ``check_channels``).

    Args:
        task: 'reid', 'face' or 'fer'.
        data_config: timm data config (``input_size``, ``interpolation``, ``mean``, ``std``).
    """
    check_channels(task, data_config)
    size = tuple(data_config['input_size'][1:])
    return create_transform(
        size, is_training=False, interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], crop_pct=1.0, crop_mode=_crop_mode(task, size))


def train_transform(task: str, data_config: Dict[str, Any], re_prob: float = 0., crop_padding: int = 0,
                    hflip: float = 0.5) -> Callable:
    """Random PIL -> (C, H, W) normalised tensor for training (``UsageError``: see ``check_channels``).

    Args:
        task: 'reid', 'face' or 'fer'.
        data_config: timm data config.
        re_prob: probability of random erasing (0: off).
        crop_padding: zero padding before a random crop back to the input size (0: no random crop).
        hflip: probability of a horizontal flip.
    """
    check_channels(task, data_config)
    size = tuple(data_config['input_size'][1:])
    interp = str_to_interp_mode(data_config['interpolation'])
    if _crop_mode(task, size) == 'center':
        steps = [transforms.Resize(size[0], interpolation=interp), transforms.CenterCrop(size)]
    else:
        steps = [transforms.Resize(size, interpolation=interp)]
    if hflip > 0:
        steps.append(transforms.RandomHorizontalFlip(hflip))
    if crop_padding > 0:
        steps += [transforms.Pad(crop_padding), transforms.RandomCrop(size)]
    steps += [MaybeToTensor(), transforms.Normalize(data_config['mean'], data_config['std'])]
    if re_prob > 0:
        steps.append(RandomErasing(re_prob, mode='const', device='cpu'))
    return transforms.Compose(steps)
