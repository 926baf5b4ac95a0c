"""Scoring a model with the paper's metrics (SPEC 5), on one process or sharded over DDP ranks,
and the ``timm-stra eval reid|face|fer`` command.

Accuracies, mAP and CMC ranks are reported in percent; face thresholds in squared L2 distance.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..arguments import at_least
from ..atomic import results_file, save_results
from ..checkpoint_file import CheckpointError
from ..markdown import markdown_table
from ..models.pretrained_errors import PretrainedWeightsError
from .checkpoint import load_model
from .data import BadDataError, FaceBinError
from .data.fer2013 import FER2013_CLASSES
from .distributed import DistEnv, check_share, gather_in_order, init_distributed, shutdown, task_device
from .metrics import reid_cmc_map, top1_accuracy, verification_accuracy
from .task_data import EvalSets, load_eval_sets
from .transforms import eval_transform
from .usage import UsageError


class _WithIndex(Dataset):
    """Items (image, dataset index) of a dataset whose items are (image, anything)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], index


@torch.no_grad()
def extract(fn: Callable, dataset: Dataset, env: DistEnv, batch_size: int = 128, workers: int = 0,
            desc: str = '', progress: bool = True) -> torch.Tensor:
    """``fn`` over every image of ``dataset``; each rank takes every world_size-th image.

    Returns:
        (N, ...) float32 on the CPU, in dataset order, on every rank.
    """
    shard = Subset(_WithIndex(dataset), range(env.rank, len(dataset), env.world_size))
    # its own generator: evaluating never draws from the global RNG, so training continues identically
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=env.device.type == 'cuda', generator=torch.Generator().manual_seed(0))
    outs, idxs = [], []
    for images, idx in tqdm(loader, desc=desc, disable=not (progress and env.is_main), leave=False):
        outs.append(fn(images.to(env.device, non_blocking=True)).float().cpu())
        idxs.append(idx)
    if not outs:  # more ranks than images: this rank has none
        return gather_in_order(torch.zeros(0, dtype=torch.int64), None, env)
    return gather_in_order(torch.cat(idxs), torch.cat(outs), env)


def embed(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's embedding (ReID / face): (B, C, H, W) -> (B, D)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def embed_with_flip(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embeddings of the images and of their horizontal flips, concatenated: (B, 2D)."""
    return torch.cat([embed(model, images), embed(model, images.flip(3))], dim=1)


def check_outputs(model: torch.nn.Module, task: str, input_size, device) -> None:
    """``UsageError`` unless ``model`` gives what ``task`` scores: FER2013's 7 class logits (fer), one embedding
    vector per image (reid, face). Tried on one blank image before any data is read: otherwise a model of another
    head scored garbage (the argmax of an embedding as a class) or failed after every image was extracted."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, *input_size, device=device)
            out = model(x) if task == 'fer' else embed(model, x)
    finally:
        model.train(was_training)
    shape = tuple(out.shape[1:])
    if task == 'fer' and shape != (len(FER2013_CLASSES),):
        raise UsageError(f'the model gives outputs of shape {shape} per image; fer scores the logits of FER2013\'s '
                         f'{len(FER2013_CLASSES)} classes: give a model with num_classes={len(FER2013_CLASSES)} (as '
                         'timm-stra train fer writes).')
    if task != 'fer' and len(shape) != 1:
        raise UsageError(f'the model\'s embedding is of shape {shape} per image, not a vector (a model built with '
                         f"global_pool=''?); {task} compares one vector per image: give a model that pools its "
                         'features.')


def evaluate(model: torch.nn.Module, sets: EvalSets, env: DistEnv, batch_size: int = 128, workers: int = 0,
             progress: bool = True) -> Dict[str, float]:
    """The task's metrics for ``model`` (put in eval mode here; the caller restores the mode).

    Returns:
        reid: mAP, rank1, rank5, rank10; face: <set>_accuracy, <set>_accuracy_std, <set>_threshold per
        ``.bin``; fer: public_test_top1, private_test_top1.
    """
    model.eval()
    kw = dict(env=env, batch_size=batch_size, workers=workers, progress=progress)
    if sets.task == 'reid':
        q, g = sets.market.query, sets.market.gallery
        qf = extract(lambda x: embed(model, x), sets.query, desc='query', **kw)
        gf = extract(lambda x: embed(model, x), sets.gallery, desc='gallery', **kw)
        out = reid_cmc_map(qf, gf, torch.tensor(q.pids), torch.tensor(g.pids), torch.tensor(q.camids),
                           torch.tensor(g.camids))
        return {'mAP': 100 * out['mAP'], **{f'rank{k}': 100 * out['cmc'][k - 1] for k in (1, 5, 10)}}
    if sets.task == 'face':
        metrics = {}
        for pairs in sets.face_pairs:
            feats = extract(lambda x: embed_with_flip(model, x), pairs, desc=pairs.name, **kw)
            res = verification_accuracy(feats[0::2], feats[1::2], pairs.issame)
            metrics.update({f'{pairs.name}_accuracy': 100 * res['accuracy'],
                            f'{pairs.name}_accuracy_std': 100 * res['accuracy_std'],
                            f'{pairs.name}_threshold': res['threshold']})
        return metrics
    if sets.task == 'fer':
        names = {'PublicTest': 'public_test_top1', 'PrivateTest': 'private_test_top1'}
        metrics = {}
        for split, dataset in sets.fer.items():
            logits = extract(model, dataset, desc=split, **kw)
            metrics[names[split]] = 100 * top1_accuracy(logits, dataset.labels)
        return metrics
    raise ValueError(f'Unknown task {sets.task!r}')


def metrics_table(metrics: Dict[str, object]) -> str:
    """Metrics as a two-column Markdown table (floats with 4 decimals)."""
    return markdown_table([{'metric': k, 'value': v} for k, v in metrics.items()], decimals=4)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='timm-stra eval', description="Score a trained model with the paper's metrics: mAP and CMC ranks "
                                           '(reid), 10-fold verification accuracy (face), top-1 accuracy (fer).')
    p.add_argument('task', choices=('reid', 'face', 'fer'))
    p.add_argument('--data', required=True,
                   help='reid: Market-1501/DukeMTMC-reID folder; face: folder of .bin files or one .bin; '
                        'fer: fer2013.csv or its folder')
    p.add_argument('--model', '--checkpoint', dest='model', required=True,
                   help='training output folder, checkpoint folder or .safetensors, local-dir:FOLDER or hf-hub:ID')
    p.add_argument('--bins', nargs='*', default=(), help='face: these .bin files instead of those in --data')
    p.add_argument('--batch-size', type=at_least(1), default=128, help='images per batch (default: 128)')
    p.add_argument('--workers', type=at_least(0), default=4, help='data loading processes (default: 4)')
    p.add_argument('--device', default=None, type=task_device, help='cpu, cuda or cuda:N (default: cuda if available)')
    p.add_argument('--output', default=None, type=results_file,
                   help='write the metrics here as JSON (missing folders are created)')
    p.add_argument('--skip-bad', action='store_true', help='skip (and count) unreadable images or rows')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def _nothing_to_evaluate(sets: EvalSets, data) -> str:
    """What is missing when ``sets`` hold nothing to measure ('' when they do). (A Market-1501 folder without
    query or gallery images is refused when it is read.)"""
    where = f'{data} does not exist' if not Path(data).exists() else f'found none in {data}'
    if sets.task == 'face' and not sets.face_pairs:
        return (f'no verification files to evaluate on: {where}. Give a folder of insightface .bin pair lists '
                '(lfw.bin, cfp_fp.bin, ...) as --data, or the files with --bins.')
    if sets.task == 'fer' and not sets.fer:
        return (f'no PublicTest or PrivateTest rows to evaluate on in {data}. Give the full fer2013.csv (or its '
                'folder), whose Usage column marks the test rows.')
    return ''


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    env = init_distributed(args.device)
    try:
        model, data_config = load_model(args.model)
        model.to(env.device)
        check_outputs(model, args.task, data_config['input_size'], env.device)
        sets = load_eval_sets(args.task, args.data, eval_transform(args.task, data_config), args.skip_bad,
                              face_bins=args.bins, progress=not args.no_progress and env.is_main,
                              share=check_share(env))
    except (BadDataError, CheckpointError, FaceBinError, FileNotFoundError, PretrainedWeightsError, UsageError) as e:
        print(f'timm-stra eval {args.task}: {e}', file=sys.stderr)
        shutdown(env, barrier=False)
        return 1
    nothing = _nothing_to_evaluate(sets, args.data)
    if nothing:
        print(f'timm-stra eval {args.task}: {nothing}', file=sys.stderr)
        shutdown(env, barrier=False)
        return 1
    metrics = evaluate(model, sets, env, args.batch_size, args.workers, not args.no_progress)
    if sets.skipped:
        metrics['skipped_bad'] = sets.skipped
    status = 0
    if env.is_main:
        print(metrics_table(metrics))
        problem = args.output and save_results(args.output, json.dumps(
            {'task': args.task, 'model': args.model, 'data': str(args.data), 'metrics': metrics}, indent=2))
        if problem:
            print(f'timm-stra eval {args.task}: {problem}', file=sys.stderr)
            status = 1
    shutdown(env)
    return status


if __name__ == '__main__':
    sys.exit(main())
