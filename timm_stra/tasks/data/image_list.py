"""A list of (image path, label) pairs as a dataset, and the up-front check that every image decodes."""
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .bad_data import BadDataReport

Sample = Tuple[str, int]


def load_image(path: str, mode: str = 'RGB') -> Image.Image:
    """Decode an image file fully and convert it to ``mode`` ('RGB' or 'L')."""
    with Image.open(path) as img:
        img.load()
        return img.convert(mode)


def check_images(samples: Sequence[Sample], report: BadDataReport, progress: bool = False) -> List[Sample]:
    """Decode every image once; unreadable ones go to ``report`` and are left out of the result. ``progress``
    shows a bar (a large data set takes minutes).

    Call ``report.finish()`` afterwards: it stops the run unless bad images may be skipped.
    """
    good = []
    for sample in tqdm(samples, desc='checking images', unit='image', leave=False, disable=not progress):
        try:
            load_image(sample[0])
        except Exception as e:  # PIL raises many types for broken files
            report.add(str(sample[0]), f'cannot read image ({type(e).__name__}: {e})')
            continue
        good.append(sample)
    return good


class ImageList(Dataset):
    """Images from a list of (path, label); returns (transformed image, label).

    Args:
        samples: (path, integer label) pairs.
        transform: PIL image -> tensor (C, H, W), e.g. a timm transform.
        mode: PIL mode the images are converted to.
    """

    def __init__(self, samples: Sequence[Sample], transform: Optional[Callable] = None, mode: str = 'RGB'):
        self.samples = list(samples)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            img = load_image(path, self.mode)
        except Exception as e:
            raise OSError(f'cannot read image {path}: {e}') from e
        if self.transform is not None:
            img = self.transform(img)
        return img, label


def list_images(folder: Path) -> List[Path]:
    """Image files (jpg, jpeg, png, bmp) directly in ``folder``, sorted by name."""
    exts = {'.jpg', '.jpeg', '.png', '.bmp'}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
