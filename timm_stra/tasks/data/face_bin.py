"""insightface verification pair files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...), read safely.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``2 * n`` encoded images (JPEG/PNG
bytes; pair i is images 2i and 2i+1) and ``n`` booleans (same person or not). insightface
reads it with ``pickle.load(f, encoding='bytes')``, which would run any code a crafted file
names. Here ``PairListUnpickler`` (``pair_unpickler.py``) resolves no global but a few
stand-ins: for bytes as protocol 2 stores them, and for NumPy's booleans (never NumPy's own
code); the result must have exactly that structure.
"""
import io
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from .check_share import CheckShare, find_undecodable
from .pair_unpickler import PairListUnpickler, plain_flags


class FaceBinError(ValueError):
    """A ``.bin`` file is not an insightface pair list (or tries to load code)."""


def load_face_bin(path) -> Tuple[List[bytes], List[bool]]:
    """Read and check an insightface ``.bin`` pair file.

    Returns:
        (images, issame): ``2 * n`` encoded images and ``n`` booleans (Python's, also where the file holds
        NumPy's).

    Raises:
        FaceBinError: the file is not a pickle of (list of bytes, list of bools) with twice as many
            images as flags, or it references any Python object (code is never run).
    """
    path = Path(path)
    hint = ('expected an insightface verification file: a pickle of (list of 2n encoded images as bytes, '
            'list of n booleans)')
    try:
        with path.open('rb') as f:
            obj = PairListUnpickler(f, encoding='bytes').load()
    except FileNotFoundError:
        raise
    except Exception as e:
        raise FaceBinError(f'{path}: refused ({type(e).__name__}: {e}); {hint}.') from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise FaceBinError(f'{path}: holds a {type(obj).__name__}, not a pair (images, issame); {hint}.')
    bins, issame = obj[0], plain_flags(obj[1])
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise FaceBinError(f'{path}: the first element is not a list of bytes; {hint}.')
    if type(issame) not in (list, tuple) or not all(isinstance(s, bool) for s in issame):
        raise FaceBinError(f'{path}: the second element is not a list of booleans; {hint}.')
    if len(bins) != 2 * len(issame) or not issame:
        raise FaceBinError(f'{path}: {len(bins)} images for {len(issame)} pairs (need 2 per pair); {hint}.')
    return [bytes(b) for b in bins], list(issame)


class FacePairs(Dataset):
    """The images of a ``.bin`` pair file, in file order; ``issame`` holds the pair flags.

    Args:
        path: the ``.bin`` file.
        transform: PIL RGB image -> (3, H, W) tensor.

    Item i is (image i, i); pair j is images 2j and 2j+1. With ``check`` every image is decoded once
    here (a progress bar if ``progress``), so that a broken one stops a run before training, not at
    its first evaluation.
    """

    def __init__(self, path, transform: Optional[Callable] = None, check: bool = False, progress: bool = False):
        self.path = str(path)
        self.name = Path(path).stem
        self.images, issame = load_face_bin(path)
        self.issame = torch.tensor(issame, dtype=torch.bool)
        self.transform = transform
        if check:
            self.check(progress)

    def check(self, progress: bool = False, share: CheckShare = CheckShare()) -> None:
        """Decode every image once (this process's ``share`` of them, under DDP; a progress bar if ``progress``).

        Raises:
            FaceBinError: naming the first image that does not decode (on every process).
        """
        bad = find_undecodable(len(self.images), self._open, share, progress, desc=f'checking {self.name}')
        if bad:
            index, why = bad[0]
            raise FaceBinError(self._broken(index, why))

    def __len__(self) -> int:
        return len(self.images)

    def _open(self, index: int) -> Image.Image:
        with Image.open(io.BytesIO(self.images[index])) as img:
            return img.convert('RGB')

    def _broken(self, index: int, why) -> str:
        return f'{self.path}: image {index} does not decode ({why}). Download or export the file again.'

    def _decode(self, index: int) -> Image.Image:
        try:
            return self._open(index)
        except Exception as e:
            raise FaceBinError(self._broken(index, e)) from e

    def __getitem__(self, index: int):
        img = self._decode(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, index
