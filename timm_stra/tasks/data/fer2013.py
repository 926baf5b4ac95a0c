"""FER2013 from its published ``fer2013.csv``: columns ``emotion,pixels,Usage`` (SPEC 4).

``emotion`` is 0..6 (Anger, Disgust, Fear, Happiness, Sadness, Surprise, Neutral), ``pixels``
2304 space-separated grey values (48x48, row-major), ``Usage`` one of Training (28,709 rows),
PublicTest (3,589) and PrivateTest (3,589).
"""
import csv
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .bad_data import BadDataError, BadDataReport

FER2013_CLASSES = ('Anger', 'Disgust', 'Fear', 'Happiness', 'Sadness', 'Surprise', 'Neutral')
USAGES = ('Training', 'PublicTest', 'PrivateTest')
SIDE = 48


def _shown(text: str, limit: int = 24) -> str:
    """A field as a message quotes it: a pixel string (9 kB) cut to its start."""
    return repr(text if len(text) <= limit else text[:limit] + '...')


def _parse_row(row: Dict[str, str]) -> Tuple[int, np.ndarray, str]:
    try:
        emotion = int(row['emotion'])
    except ValueError:
        raise ValueError(f"emotion {_shown(row['emotion'])} is not an integer") from None
    if not 0 <= emotion < len(FER2013_CLASSES):
        raise ValueError(f'emotion {emotion} is not in 0..6')
    values = row['pixels'].split()
    if len(values) != SIDE * SIDE:
        raise ValueError(f'{len(values)} pixel values, expected {SIDE * SIDE}')
    pixels = [int(v) for v in values]
    if min(pixels) < 0 or max(pixels) > 255:  # checked before the array: a huge value would overflow it
        raise ValueError('pixel values must be 0..255')
    pixels = np.array(pixels, dtype=np.int64)
    usage = row['Usage']
    if usage not in USAGES:
        raise ValueError(f'Usage {usage!r} is not one of {", ".join(USAGES)}')
    return emotion, pixels.astype(np.uint8).reshape(SIDE, SIDE), usage


def _rows(reader: csv.DictReader, path: Path) -> Iterator[Dict[str, str]]:
    """The reader's rows; text the csv module or the encoding cannot read stops it, naming the last line read
    (what follows cannot be told apart into rows: not skippable)."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as e:
            raise BadDataError(f'FER2013 file {path}: cannot be read as CSV text after line {reader.line_num} ({e}). '
                               'Download or extract fer2013.csv again.') from e
        yield row


def read_fer2013(path, skip_bad: bool = False) -> Tuple[Dict[str, Tuple[torch.Tensor, torch.Tensor]], int]:
    """Parse ``fer2013.csv``.

    Returns:
        ({usage: (images uint8 (N, 48, 48), labels int64 (N,))}, number of rows skipped).

    Raises:
        FileNotFoundError: no such file.
        BadDataError: a malformed row (named by its line number), unless ``skip_bad``; a bad header always.
    """
    path = Path(path)
    if path.is_dir():
        path = path / 'fer2013.csv'
    report = BadDataReport(skip_bad, f'FER2013 file {path}')
    found = {u: ([], []) for u in USAGES}
    with path.open(newline='', encoding='utf-8-sig') as f:  # (a byte-order mark, as some editors write, is dropped)
        reader = csv.DictReader(f)
        try:
            fieldnames = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as e:
            fieldnames = f'unreadable ({e})'
        columns = ('emotion', 'pixels', 'Usage')
        missing = [c for c in columns if not isinstance(fieldnames, list) or c not in fieldnames]
        if missing:
            shown = '[' + ', '.join(map(_shown, fieldnames)) + ']' if isinstance(fieldnames, list) else fieldnames
            raise BadDataError(f"{path}:1: the header {shown} lacks the column{'s' * (len(missing) > 1)} "
                               f"{', '.join(missing)}: give the fer2013.csv of the Kaggle challenge (its first "
                               'line is "emotion,pixels,Usage").')
        for row in _rows(reader, path):
            try:
                if None in row or any(row[k] is None for k in ('emotion', 'pixels', 'Usage')):
                    raise ValueError('wrong number of fields')
                emotion, image, usage = _parse_row(row)
            except ValueError as e:
                report.add(f'{path}:{reader.line_num}', f'malformed row ({e})')
                continue
            found[usage][0].append(image)
            found[usage][1].append(emotion)
    skipped = report.finish()
    splits = {}
    for usage, (images, labels) in found.items():
        images = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, SIDE, SIDE, dtype=torch.uint8)
        splits[usage] = (images, torch.tensor(labels, dtype=torch.int64))
    return splits, skipped


class Fer2013(Dataset):
    """One FER2013 split as grey PIL images through ``transform``; items are (image, label).

    Args:
        images: uint8 (N, 48, 48).
        labels: int64 (N,).
        transform: PIL 'L' image -> (1, H, W) tensor.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Optional[Callable] = None):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index].numpy(), mode='L')
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])
