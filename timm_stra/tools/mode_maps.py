"""``timm-stra modes``: what the modes see. Each StRA operator's spatial masks over an image, as a picture.

Mode attention pools its input with G soft spatial masks, one per mode, each summing to 1 over
the positions (SPEC 1.2); trained with the diversity loss they come to cover different parts of
the object. ``spatial_masks`` runs a model on images (eval mode, no gradients) and reads every
operator's masks with forward hooks on its ``DiversityRecorder``, which passes them through
unchanged. ``mask_picture`` lays them out: one row per operator, its first tile the image, then
the operator's G masks, each scaled from its smallest to its largest value, upsampled to the
image and blended over it: amber where a mode puts most of its mass, the image darkened where it
puts least (a constant mask: darkened all over). The command draws them over the image as the
model saw it: read as a viewer shows it (``shown_image.load_image_as_shown``; not the training data's
``tasks.data.image_list.load_image``, which only converts), then resized and cropped by the model's
evaluation transform (``split_transform``). Only Pillow, which torchvision brings, draws it.

    timm-stra modes person.jpg --model runs/reid --out person-modes.png
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform
from timm.data.transforms import MaybeToTensor
from torch import nn
from torchvision import transforms

from ..arguments import at_least, help_text
from ..atomic import atomic_write_file, results_file
from ..layers.diversity import DiversityRecorder
from .shown_image import load_image_as_shown

MAX_TILE_HEIGHT = 2048
MAX_PIXELS = 2 ** 27  # 134 million: 400 MB of RGB (a ReID model's 3 x 9 tiles at the largest tile height: 57 million)
HIGHLIGHT = torch.tensor([255., 210., 0.])  # where a mode puts most of its mass (amber over the darkened image)


@torch.no_grad()
def spatial_masks(model: nn.Module, images: torch.Tensor) -> List[torch.Tensor]:
    """The spatial masks of every StRA operator of ``model`` for ``images``, in the order the operators run.

    The model runs in eval mode (every module's own mode is restored afterwards), without gradients.

    Args:
        images: (B, C, H, W), transformed as the model expects.

    Returns:
        One (B, G, h, w) float32 tensor per operator, each mask summing to 1 over its h*w positions.

    Raises:
        ValueError: the model has no mode attention (a ResNet twin, or ``mode='none'``).
    """
    recorders = [m for m in model.modules() if isinstance(m, DiversityRecorder)]
    if not recorders:
        name = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
        raise ValueError(f'{name} has no mode attention, so no spatial masks: give a StRA model '
                         "(one built with mode='full' or 'no_interaction').")
    masks: List[torch.Tensor] = []
    hooks = [r.register_forward_hook(lambda module, args, out: masks.append(out.detach().float().cpu()))
             for r in recorders]
    modes = [(m, m.training) for m in model.modules()]  # each its own: a frozen norm stays in eval mode
    try:
        model.eval()
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes:
            module.training = training
    return masks


def mask_picture(image: Image.Image, masks: Sequence[torch.Tensor], tile_height: int = 192) -> Image.Image:
    """One row per operator: ``image``, then its masks blended over it (see the module docstring).

    Args:
        image: the picture the masks were computed for, as the model saw it (``seen_image``: after the
            resize and crop of its transform); any size and mode.
        masks: one (G, h, w) tensor per operator (a sample of ``spatial_masks``' tensors).
        tile_height: height of each tile in pixels; the width keeps the image's aspect ratio.

    Returns:
        An RGB image of (1 + max G) x len(masks) tiles.
    """
    if not masks:
        raise ValueError('mask_picture: no masks to draw.')
    if any(m.ndim != 3 for m in masks):
        raise ValueError(f'mask_picture: takes one (G, h, w) tensor per operator, got shapes '
                         f'{[tuple(m.shape) for m in masks]}; for sample i of spatial_masks(...), give '
                         '[m[i] for m in masks].')
    width = max(1, round(image.width * tile_height / image.height))
    tile = image.convert('RGB').resize((width, tile_height), Image.BILINEAR)
    pixels = torch.frombuffer(bytearray(tile.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(tile_height, width, 3).float()  # H, W, 3
    columns = 1 + max(m.shape[0] for m in masks)
    if columns * width * len(masks) * tile_height > MAX_PIXELS:
        raise ValueError(f'mask_picture: {columns} x {len(masks)} tiles of {width}x{tile_height} pixels would make a '
                         f'picture of {columns * width}x{len(masks) * tile_height}, more than {MAX_PIXELS:,} pixels; '
                         'give a lower tile height.')
    picture = Image.new('RGB', (columns * width, len(masks) * tile_height), 'black')
    for row, operator_masks in enumerate(masks):
        picture.paste(tile, (0, row * tile_height))
        low = operator_masks.flatten(1).amin(dim=1)[:, None, None]
        high = operator_masks.flatten(1).amax(dim=1)[:, None, None]
        scaled = (operator_masks - low) / (high - low).clamp_min(1e-12)  # 0 where a mask is constant
        up = F.interpolate(scaled[:, None], size=(tile_height, width), mode='bilinear', align_corners=False)[:, 0]
        for g, weight in enumerate(up.clamp(0, 1)[..., None]):
            blended = pixels * (0.5 - 0.2 * weight) + HIGHLIGHT * (0.7 * weight)
            data = blended.round().clamp(0, 255).to(torch.uint8).numpy().tobytes()
            picture.paste(Image.frombytes('RGB', (width, tile_height), data), ((1 + g) * width, row * tile_height))
    return picture


def split_transform(transform: transforms.Compose) -> Tuple[Callable, Callable]:
    """timm's evaluation transform as two: the steps that change the picture (resize, crop), which give what the
    model sees, and the steps that make it a tensor (``ToTensor``, ``Normalize``)."""
    steps = list(transform.transforms)
    to_tensor = (MaybeToTensor, transforms.ToTensor, transforms.PILToTensor)
    first = next((i for i, step in enumerate(steps) if isinstance(step, to_tensor)), len(steps))
    return transforms.Compose(steps[:first]), transforms.Compose(steps[first:])


def _load(spec: str) -> nn.Module:
    """A trained model (checkpoint path, ``local-dir:``, ``hf-hub:``), or a registered name (random weights)."""
    import timm

    import timm_stra  # noqa: F401  (registers the models)
    from ..tasks.checkpoint import load_model

    if spec.startswith(('hf-hub:', 'local-dir:')) or Path(spec).exists():
        return load_model(spec)[0]
    return timm.create_model(spec)


def _picture_format(out: str) -> str:
    """Pillow's format for a picture named ``out``, from its extension."""
    extension = Path(out).suffix.lower()
    fmt = Image.registered_extensions().get(extension)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f'{out}: Pillow cannot write pictures named {extension or "without an extension"}; '
                         'name the picture .png or .jpg.')
    return fmt


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-stra modes', description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='an image file')
    parser.add_argument('--model', required=True,
                        help='a trained model (a training output folder, a checkpoint folder, local-dir:DIR or '
                             'hf-hub:ORG/NAME), or a registered name such as stra_resnet50_reid (random weights)')
    parser.add_argument('--out', required=True, type=results_file,
                        help='the picture to write (.png, .jpg; missing folders are created)')
    parser.add_argument('--tile-height', type=at_least(1, MAX_TILE_HEIGHT), default=192,
                        help=f'pixels per tile, up to {MAX_TILE_HEIGHT} (default 192)')
    args = parser.parse_args(argv)
    try:
        fmt = _picture_format(args.out)
        try:
            image = load_image_as_shown(args.image)
        except OSError as e:  # (PIL's error for a truncated file names no file)
            raise OSError(f'{args.image}: cannot be read as an image ({e})') from e
        model = _load(args.model)
        from ..tasks.checkpoint import data_config_for  # (the tasks' modules load only when the command runs)
        config = data_config_for(model)
        # timm's evaluation transform: resize and crop (what the model sees, and what the picture shows), normalise
        seen, to_tensor = split_transform(create_transform(**config))
        image = seen(image.convert('L' if config['input_size'][0] == 1 else 'RGB'))
        masks = spatial_masks(model, to_tensor(image)[None])
        picture = mask_picture(image, [m[0] for m in masks], args.tile_height)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_file(args.out, lambda tmp: picture.save(tmp, format=fmt))
    except (OSError, ValueError, RuntimeError) as e:
        print(f'timm-stra modes: {e}', file=sys.stderr)
        return 1
    print(f'{args.out}: {len(masks)} operators x {masks[0].shape[1]} modes, masks of '
          f'{masks[0].shape[2]}x{masks[0].shape[3]} positions, over the {image.height}x{image.width} (HxW) image '
          'the model saw', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
