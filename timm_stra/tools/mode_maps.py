"""``timm-stra modes``: what the modes see. Each StRA operator's spatial masks over an image, as a picture.

Mode attention pools its input with G soft spatial masks, one per mode, each summing to 1 over
the positions (SPEC 1.2); trained with the diversity loss they come to cover different parts of
the object. ``spatial_masks`` runs a model on images (eval mode, no gradients) and reads every
operator's masks with forward hooks on its ``DiversityRecorder``, which passes them through
unchanged. ``mask_picture`` lays them out: one row per operator, its first tile the image, then
the operator's G masks, each scaled from its smallest to its largest value, upsampled to the
image and blended over it: amber where a mode puts most of its mass, the image darkened where it
puts least (a constant mask: darkened all over). Only Pillow, which torchvision brings, draws it.

    timm-stra modes person.jpg --model runs/reid --out person-modes.png
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torch import nn

from ..layers.diversity import DiversityRecorder

HIGHLIGHT = torch.tensor([255., 210., 0.])  # where a mode puts most of its mass (amber over the darkened image)


@torch.no_grad()
def spatial_masks(model: nn.Module, images: torch.Tensor) -> List[torch.Tensor]:
    """The spatial masks of every StRA operator of ``model`` for ``images``, in the order the operators run.

    The model runs in eval mode (its mode is restored afterwards), without gradients.

    Args:
        images: (B, C, H, W), transformed as the model expects.

    Returns:
        One (B, G, h, w) float32 tensor per operator, each mask summing to 1 over its h*w positions.

    Raises:
        ValueError: the model has no mode attention (a ResNet twin, or ``mode='none'``).
    """
    recorders = [m for m in model.modules() if isinstance(m, DiversityRecorder)]
    if not recorders:
        raise ValueError(f'{type(model).__name__} has no mode attention, so no spatial masks: give a StRA model '
                         "(one built with mode='full' or 'no_interaction').")
    masks: List[torch.Tensor] = []
    hooks = [r.register_forward_hook(lambda module, args, out: masks.append(out.detach().float().cpu()))
             for r in recorders]
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return masks


def mask_picture(image: Image.Image, masks: Sequence[torch.Tensor], tile_height: int = 192) -> Image.Image:
    """One row per operator: ``image``, then its masks blended over it (see the module docstring).

    Args:
        image: the picture the masks were computed for (any size and mode).
        masks: one (G, h, w) tensor per operator (a sample of ``spatial_masks``' tensors).
        tile_height: height of each tile in pixels; the width keeps the image's aspect ratio.

    Returns:
        An RGB image of (1 + max G) x len(masks) tiles.
    """
    if not masks:
        raise ValueError('mask_picture: no masks to draw.')
    width = max(1, round(image.width * tile_height / image.height))
    tile = image.convert('RGB').resize((width, tile_height), Image.BILINEAR)
    pixels = torch.frombuffer(bytearray(tile.tobytes()), dtype=torch.uint8).view(tile_height, width, 3).float()  # H, W, 3
    columns = 1 + max(m.shape[0] for m in masks)
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


def _load(spec: str) -> nn.Module:
    """A trained model (checkpoint path, ``local-dir:``, ``hf-hub:``), or a registered name (random weights)."""
    import timm

    import timm_stra  # noqa: F401  (registers the models)
    from ..tasks.checkpoint import load_model

    if spec.startswith(('hf-hub:', 'local-dir:')) or Path(spec).exists():
        return load_model(spec)[0]
    return timm.create_model(spec)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-stra modes', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('image', help='an image file')
    parser.add_argument('--model', required=True,
                        help='a trained model (a training output folder, a checkpoint folder, local-dir:DIR or '
                             'hf-hub:ORG/NAME), or a registered name such as stra_resnet50_reid (random weights)')
    parser.add_argument('--out', required=True, help='the picture to write (.png, .jpg)')
    parser.add_argument('--tile-height', type=int, default=192, help='pixels per tile (default 192)')
    args = parser.parse_args(argv)
    try:
        model = _load(args.model)
        config = resolve_model_data_config(model)
        image = Image.open(args.image)
        image.load()
    except (OSError, ValueError, RuntimeError) as e:
        print(f'timm-stra modes: {e}', file=sys.stderr)
        return 1
    transform = create_transform(**config)  # timm's evaluation transform: resize, crop, normalise
    mode = 'L' if config['input_size'][0] == 1 else 'RGB'
    try:
        masks = spatial_masks(model, transform(image.convert(mode))[None])
    except ValueError as e:
        print(f'timm-stra modes: {e}', file=sys.stderr)
        return 1
    picture = mask_picture(image, [m[0] for m in masks], args.tile_height)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f'{args.out}: {len(masks)} operators x {masks[0].shape[1]} modes, masks of '
          f'{masks[0].shape[2]}x{masks[0].shape[3]} positions', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
