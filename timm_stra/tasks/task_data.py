"""Each task's training set and evaluation sets, from the ``--data`` folder (SPEC 4-5).

==========  ==========================================  ==========================================
task        training                                    evaluation
==========  ==========================================  ==========================================
reid        DIR/bounding_box_train/                     DIR/query/ against DIR/bounding_box_test/
face        DIR/<identity>/<image> (identity folders)   the insightface ``*.bin`` files in DIR
fer         DIR/fer2013.csv, Usage == Training          PublicTest and PrivateTest rows
==========  ==========================================  ==========================================
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from .data import (FER2013_CLASSES, BadDataError, CheckShare, FaceBinError, FacePairs, Fer2013, ImageList, Market1501,
                   read_fer2013, scan_identity_folders)
from .metrics.face_verification import NUM_FOLDS


@dataclass
class TrainSet:
    """The training dataset (items (image, label)), its number of classes, entries skipped as bad, and the classes'
    names in label order (ReID: original identities; face: identity folders; fer: FER2013's emotions)."""
    dataset: Dataset
    num_classes: int
    skipped: int = 0
    classes: Tuple[str, ...] = ()


@dataclass
class EvalSets:
    """What a task is evaluated on: a Market-1501 split pair, ``.bin`` pair sets, or FER test splits."""
    task: str
    market: Optional[Market1501] = None
    query: Optional[Dataset] = None    # reid: ImageList of market.query
    gallery: Optional[Dataset] = None  # reid: ImageList of market.gallery
    face_pairs: List[FacePairs] = field(default_factory=list)
    fer: dict = field(default_factory=dict)  # split name -> Fer2013
    skipped: int = 0


def load_train_set(task: str, data, transform: Callable, skip_bad: bool = False, check: bool = True,
                   progress: bool = False, share: CheckShare = CheckShare()) -> TrainSet:
    """Read (and check, with a progress bar if ``progress``; under DDP each process decodes its ``share``) the
    training data of ``task`` under ``data``."""
    if task == 'reid':
        return _reid_train_set(Market1501.load(data, splits=('train',), skip_bad=skip_bad, check=check,
                                               progress=progress, share=share), transform)
    if task == 'face':
        samples, names, skipped = scan_identity_folders(data, skip_bad=skip_bad, check=check, progress=progress,
                                                        share=share)
        return TrainSet(ImageList(samples, transform), len(names), skipped, tuple(names))
    if task == 'fer':
        return _fer_train_set(data, *read_fer2013(data, skip_bad=skip_bad), transform)
    raise ValueError(f'Unknown task {task!r}')


def _reid_train_set(market: Market1501, transform: Callable) -> TrainSet:
    samples = list(zip(market.train.paths, market.train.pids))
    return TrainSet(ImageList(samples, transform), market.num_train_ids, market.skipped,
                    tuple(str(pid) for pid in market.train_ids))


def _reid_eval_sets(market: Market1501, transform: Callable, skipped: int) -> EvalSets:
    query, gallery = (ImageList(list(zip(s.paths, s.pids)), transform) for s in (market.query, market.gallery))
    return EvalSets('reid', market=market, query=query, gallery=gallery, skipped=skipped)


def _fer_train_set(data, splits: Dict[str, Tuple[torch.Tensor, torch.Tensor]], skipped: int,
                   transform: Callable) -> TrainSet:
    images, labels = splits['Training']
    if len(labels) == 0:
        raise ValueError(f'{data}: no Training rows in fer2013.csv.')
    return TrainSet(Fer2013(images, labels, transform), len(FER2013_CLASSES), skipped, FER2013_CLASSES)


def _fer_eval_sets(splits: Dict[str, Tuple[torch.Tensor, torch.Tensor]], skipped: int,
                   transform: Callable) -> EvalSets:
    sets = {name: Fer2013(*splits[name], transform) for name in ('PublicTest', 'PrivateTest') if len(splits[name][1])}
    return EvalSets('fer', fer=sets, skipped=skipped)


def find_face_bins(data, given: Sequence[str] = ()) -> List[Path]:
    """The verification files: ``given`` ones, or every ``*.bin`` in ``data`` (a folder or one file)."""
    if given:
        return [Path(p) for p in given]
    data = Path(data)
    return [data] if data.is_file() else sorted(data.glob('*.bin'))


def _face_pair_sets(bins: Sequence[Path], transform: Callable, check: bool, progress: bool,
                    share: CheckShare) -> List[FacePairs]:
    """The ``.bin`` files as pair sets. Two files of the same name (their metrics would be) are refused at once;
    then every file's problem in one ``FaceBinError``: a file that is not a pair list, one with fewer pairs than
    the protocol's folds, one with an image that does not decode (with ``check``)."""
    names: Dict[str, Path] = {}
    for path in bins:
        if path.stem in names:
            raise FaceBinError(f'{names[path.stem]} and {path} are both named {path.stem!r}; their metrics would be '
                               'reported under the same name: rename one.')
        names[path.stem] = path
    sets, problems = [], []
    for path in bins:
        try:
            pairs = FacePairs(path, transform)
            if len(pairs.issame) < NUM_FOLDS:
                raise FaceBinError(f'{pairs.path}: {len(pairs.issame)} pairs; the {NUM_FOLDS}-fold verification '
                                   f'protocol needs at least {NUM_FOLDS}.')
            if check:
                pairs.check(progress, share)
        except FaceBinError as e:
            problems.append(str(e))
        else:
            sets.append(pairs)
    if len(problems) > 1:
        raise FaceBinError(f'{len(problems)} verification files refused:\n  ' + '\n  '.join(problems))
    if problems:
        raise FaceBinError(problems[0])
    return sets


def load_eval_sets(task: str, data, transform: Callable, skip_bad: bool = False, check: bool = True,
                   face_bins: Sequence[str] = (), progress: bool = False, share: CheckShare = CheckShare()) -> EvalSets:
    """Read (and check, with a progress bar if ``progress``; under DDP each process decodes its ``share``) the
    evaluation data of ``task`` under ``data``; bad ``.bin`` files are refused."""
    if task == 'reid':
        market = Market1501.load(data, splits=('query', 'gallery'), skip_bad=skip_bad, check=check,
                                 progress=progress, share=share)
        return _reid_eval_sets(market, transform, market.skipped)
    if task == 'face':
        return EvalSets(task, face_pairs=_face_pair_sets(find_face_bins(data, face_bins), transform, check,
                                                         progress, share))
    if task == 'fer':
        return _fer_eval_sets(*read_fer2013(data, skip_bad=skip_bad), transform)
    raise ValueError(f'Unknown task {task!r}')


def load_task_data(task: str, data, train_transform: Callable, eval_transform: Callable, skip_bad: bool = False,
                   check: bool = True, face_bins: Sequence[str] = (), progress: bool = False,
                   share: CheckShare = CheckShare()
                   ) -> Tuple[TrainSet, EvalSets]:
    """``load_train_set`` and ``load_eval_sets`` together, each entry read once. A Market-1501 folder is read and
    checked in one pass, so that its bad entries are reported together, whatever split holds them; FER's one file
    holds both sets. Their bad entries are counted once (in the training set's ``skipped``). For face the identity
    folders and the ``.bin`` files are both read before either is refused (one ``BadDataError`` where both hold
    something bad)."""
    if task == 'reid':
        market = Market1501.load(data, skip_bad=skip_bad, check=check, progress=progress, share=share)
        return _reid_train_set(market, train_transform), _reid_eval_sets(market, eval_transform, 0)
    if task == 'fer':
        splits, skipped = read_fer2013(data, skip_bad=skip_bad)
        return _fer_train_set(data, splits, skipped, train_transform), _fer_eval_sets(splits, 0, eval_transform)
    if task == 'face':  # two sources: read both before refusing either, so that one message names all that is bad
        train_set, problems = None, []
        try:
            train_set = load_train_set(task, data, train_transform, skip_bad, check, progress, share)
        except BadDataError as e:
            problems.append(e)
        try:
            eval_sets = load_eval_sets(task, data, eval_transform, skip_bad, check, face_bins, progress, share)
        except FaceBinError as e:
            problems.append(e)
        if len(problems) > 1:
            raise BadDataError('\n'.join(str(e) for e in problems))
        if problems:
            raise problems[0]
        return train_set, eval_sets
    raise ValueError(f'Unknown task {task!r}')
