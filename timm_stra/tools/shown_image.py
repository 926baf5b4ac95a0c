"""An image file as a viewer shows it, for pictures drawn over it (``timm-stra modes``).

The training data's ``tasks.data.image_list.load_image`` only converts the pixels to RGB or grey,
as the data sets' own tools read them; a picture for people should look as the file does in a
viewer: turned by its EXIF orientation, deep pixels brought to 8 bits, transparency over white.
"""
import numpy as np
from PIL import Image, ImageOps


def load_image_as_shown(path) -> Image.Image:
    """An image file as a viewer shows it: EXIF orientation applied, 16-bit, 32-bit and float pixels scaled to 8
    bits (16-bit by their range, the others from their smallest to their largest value), transparency over white.
    """
    image = Image.open(path)
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
        image = Image.fromarray(_to_8bit(np.asarray(image), image.mode))
    if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
        rgba = image.convert('RGBA')
        image = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba).convert('RGB')
    return image


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    if mode.startswith('I;16'):
        return (values / 257).round().astype(np.uint8)
    low, high = values.min(), values.max()
    return ((values - low) * (255 / max(high - low, 1e-12))).round().astype(np.uint8)
