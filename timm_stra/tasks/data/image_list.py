"""A list of (image path, label) pairs as a dataset, and the up-front check that every image decodes."""
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from PIL import Image
from torch.utils.data import Dataset

from .bad_data import BadDataReport
from .check_share import CheckShare, find_undecodable

Sample = Tuple[str, int]


def load_image(path: str, mode: str = 'RGB') -> Image.Image:
    """Decode an image file fully and convert it to ``mode`` ('RGB' or 'L')."""
    with Image.open(path) as img:
        img.load()
        return img.convert(mode)


def check_images(samples: Sequence[Sample], report: BadDataReport, progress: bool = False,
                 share: CheckShare = CheckShare()) -> List[Sample]:
    """Decode every image once (this process's ``share`` of them, under DDP); unreadable ones go to ``report`` and
    are left out of the result, the same on every process. ``progress`` shows a bar (a large data set takes
    minutes).

    Call ``report.finish()`` afterwards: it stops the run unless bad images may be skipped.
    """
    bad = find_undecodable(len(samples), lambda index: load_image(samples[index][0]), share, progress)
    for index, why in bad:
        report.add(str(samples[index][0]), f'cannot read image ({why})')
    bad_indices = {index for index, _ in bad}
    return [sample for index, sample in enumerate(samples) if index not in bad_indices]


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
