"""Face training data as identity folders: ``ROOT/<identity>/<image>``, one folder per person."""
from pathlib import Path
from typing import List, Tuple

from .bad_data import BadDataError, BadDataReport
from .check_share import CheckShare
from .image_list import check_images, list_images


def scan_identity_folders(root, skip_bad: bool = False, check: bool = True, progress: bool = False,
                          share: CheckShare = CheckShare()) -> Tuple[List[Tuple[str, int]], List[str], int]:
    """(path, label) pairs, the identity names (label i is ``names[i]``, folders sorted by name) and
    the number of unreadable images skipped.

    Folders without images are ignored. With ``check`` every image is decoded once first (with a progress bar
    if ``progress``; under DDP each process decodes its ``share``).

    Raises:
        FileNotFoundError: no identity folder with images under ``root``.
        BadDataError: an image does not decode (unless ``skip_bad``); a ReID set's folder, or a single identity.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'{root} is not a folder of identity folders (ROOT/<identity>/<image>.jpg).')
    if (root / 'bounding_box_train').is_dir() and (root / 'query').is_dir():
        raise BadDataError(f'{root} is a person ReID set (Market-1501 layout: bounding_box_train/, query/), not face '
                           'identity folders (ROOT/<identity>/<image>.jpg): train reid on it, or give a face set.')
    names, samples = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = list_images(folder)
        if not images:
            continue
        samples += [(str(p), len(names)) for p in images]
        names.append(folder.name)
    if not samples:
        raise FileNotFoundError(f'No identity folders with images under {root} (expected ROOT/<identity>/<image>.jpg).')
    skipped = 0
    if check:
        report = BadDataReport(skip_bad, f'face identity folders {root}')
        samples = check_images(samples, report, progress, share)
        skipped = report.finish()
        samples, names = _drop_empty_identities(samples, names)
        if not samples:
            raise FileNotFoundError(f'No readable images under {root}: all {skipped} were skipped as bad.')
    if len(names) < 2:
        raise BadDataError(f'{root}: {len(names)} identity folder with images ({", ".join(names)}); training a '
                           'classifier of identities needs 2 or more (ROOT/<identity>/<image>.jpg).')
    return samples, names, skipped


def _drop_empty_identities(samples: List[Tuple[str, int]], names: List[str]
                           ) -> Tuple[List[Tuple[str, int]], List[str]]:
    """Identities left without images (all skipped as bad) removed, the others labelled 0, 1, ... in order:
    a class with no training image would still get a classifier row."""
    kept = sorted({label for _, label in samples})
    if len(kept) == len(names):
        return samples, names
    new_label = {old: new for new, old in enumerate(kept)}
    return [(path, new_label[label]) for path, label in samples], [names[old] for old in kept]
