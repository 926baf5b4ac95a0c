"""Market-1501 (and DukeMTMC-reID, same layout) folders for person re-identification (SPEC 5).

Layout::

    ROOT/bounding_box_train/0002_c1s1_000451_03.jpg   training images
    ROOT/query/...                                     query images
    ROOT/bounding_box_test/...                         gallery images

File names are ``PPPP_cXsY_FFFFFF_NN.jpg`` (Duke: ``PPPP_cX_fFFFFFFF.jpg``): PPPP is the
identity, X the camera. Identity ``-1`` marks junk images, which the protocol ignores
everywhere; ``0000`` marks distractors, which stay in the gallery as non-matches and are
left out of training.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Set, Tuple

from .bad_data import BadDataError, BadDataReport
from .check_share import CheckShare
from .image_list import check_images, list_images

_NAME = re.compile(r'^(-1|\d+)_c([1-9]\d*)[s_]')  # cameras from 1; 's' (Market) or '_' (Duke) after
JUNK = -1
DISTRACTOR = 0
SPLITS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}


def parse_market_name(name: str) -> Tuple[int, int]:
    """(identity, camera) from a Market-1501 / DukeMTMC-reID file name; camera counted from 0.

    >>> parse_market_name('0002_c1s1_000451_03.jpg')
    (2, 0)
    >>> parse_market_name('-1_c3s2_000101_01.jpg')
    (-1, 2)
    """
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f'{name!r} is not a Market-1501 file name (PPPP_cXsY_FFFFFF_NN.jpg)')
    return int(match.group(1)), int(match.group(2)) - 1


@dataclass
class ReIDSplit:
    """One split: image paths with identities and cameras (same order)."""
    paths: List[str] = field(default_factory=list)
    pids: List[int] = field(default_factory=list)
    camids: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Market1501:
    """The three splits of a Market-1501-style folder.

    ``train.pids`` are relabelled to 0..num_train_ids-1 (sorted original identities, kept in ``train_ids``);
    ``query`` and ``gallery`` keep the original identities. Junk images are dropped.
    """
    root: str
    train: ReIDSplit
    query: ReIDSplit
    gallery: ReIDSplit
    num_train_ids: int
    skipped: int = 0
    train_ids: Tuple[int, ...] = ()  # the original identity of each training label

    @classmethod
    def load(cls, root, splits=('train', 'query', 'gallery'), skip_bad: bool = False, check: bool = True,
             progress: bool = False, share: CheckShare = CheckShare()) -> 'Market1501':
        """Scan ``root``; with ``check`` every image is decoded once first (with a progress bar if ``progress``;
        under DDP each process decodes its ``share``).

        Raises:
            FileNotFoundError: a split folder is missing.
            BadDataError: a file name does not parse or an image does not decode (unless ``skip_bad``); a split
                has no image left; no query has a match in the gallery (nothing could be scored).
        """
        root = Path(root)
        report = BadDataReport(skip_bad, f'Market-1501 folder {root}')
        found, skipped_in = {}, {}
        for split in ('train', 'query', 'gallery'):
            if split not in splits:
                found[split] = ReIDSplit()
                continue
            folder = root / SPLITS[split]
            if not folder.is_dir():
                raise FileNotFoundError(
                    f'{folder} not found: a Market-1501 / DukeMTMC-reID folder holds bounding_box_train/, '
                    'query/ and bounding_box_test/.')
            samples, bad_before = [], report.count
            for path in list_images(folder):
                try:
                    pid, camid = parse_market_name(path.name)
                except ValueError as e:
                    report.add(str(path), str(e))
                    continue
                if pid == JUNK or (split == 'train' and pid == DISTRACTOR):
                    continue
                samples.append((str(path), pid, camid))
            if check:
                good = set(p for p, _ in check_images([(p, 0) for p, _, _ in samples], report, progress, share))
                samples = [s for s in samples if s[0] in good]
            found[split] = ReIDSplit([s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples])
            skipped_in[split] = report.count - bad_before
        skipped = report.finish()
        _check_usable(root, {split: found[split] for split in splits}, skipped_in)
        train = found['train']
        relabel = {pid: i for i, pid in enumerate(sorted(set(train.pids)))}
        train.pids = [relabel[p] for p in train.pids]
        return cls(str(root), train, found['query'], found['gallery'], len(relabel), skipped, tuple(relabel))


def _check_usable(root: Path, splits: Dict[str, ReIDSplit], skipped_in: Dict[str, int]) -> None:
    """Refuse splits that leave nothing to train on or to score (``skipped_in``: each split's entries skipped as
    bad), before a run starts rather than at its first evaluation."""
    for split, found in splits.items():
        if not found:
            skipped = skipped_in[split]
            why = f'all usable ones were skipped as bad ({skipped} of them)' if skipped else (
                'none named PPPP_cXsY_FFFFFF_NN.jpg with an identity other than -1 (junk)'
                + (' or 0000 (distractors)' if split == 'train' else ''))
            raise BadDataError(f'{root / SPLITS[split]}: no images to use: {why}.')
    if 'query' in splits and 'gallery' in splits:
        gallery_cams: Dict[int, Set[int]] = {}
        for pid, cam in zip(splits['gallery'].pids, splits['gallery'].camids):
            gallery_cams.setdefault(pid, set()).add(cam)
        if not any(gallery_cams.get(pid, set()) - {cam} for pid, cam in zip(splits['query'].pids,
                                                                          splits['query'].camids)):
            raise BadDataError(
                f'{root}: no query identity appears in {SPLITS["gallery"]}/ under another camera, so no query can '
                'be scored (the protocol ignores same-camera matches). Check that query/ and bounding_box_test/ '
                'come from the same data set.')
