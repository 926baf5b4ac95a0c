"""Face verification accuracy at the 10-fold best threshold (SPEC 5; the ArcFace/CosFace protocol).

Pairs are compared by the squared Euclidean distance between L2-normalised features
(the image's and its horizontal flip's embeddings concatenated, done by the caller),
which lies in [0, 4]; the thresholds 0, 0.01, ..., 3.99 are tried. Folds are
contiguous, like insightface's ``KFold(n_splits=10, shuffle=False)``: for each fold the
threshold with the best accuracy on the other nine (the first, if tied) is applied to it.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

NUM_FOLDS = 10  # the protocol's cross-validation folds


def verification_accuracy(
        feats_a: torch.Tensor,
        feats_b: torch.Tensor,
        issame: torch.Tensor,
        num_folds: int = NUM_FOLDS,
        thresholds: Optional[torch.Tensor] = None,
) -> Dict[str, float]:
    """Mean and std of the per-fold accuracies, and the mean chosen threshold.

    Args:
        feats_a, feats_b: (P, D) features of the two images of each pair (normalised here).
        issame: (P,) bool, same identity.
        num_folds: cross-validation folds.
        thresholds: (T,) squared-distance thresholds; default 0..3.99 in steps of 0.01.

    Returns:
        {'accuracy', 'accuracy_std', 'threshold'} (accuracy in 0..1; threshold in squared-distance units).
    """
    if thresholds is None:
        thresholds = torch.arange(0, 400, dtype=torch.float64) / 100
    if feats_a.dim() != 2 or feats_b.shape != feats_a.shape or issame.shape != feats_a.shape[:1]:
        raise ValueError(f'verification_accuracy: features of shapes {tuple(feats_a.shape)} and '
                         f'{tuple(feats_b.shape)} with issame of shape {tuple(issame.shape)}: give (P, D) '
                         'features for each side of P pairs and (P,) flags.')
    issame = issame.bool().cpu()
    if len(issame) < num_folds:
        raise ValueError(f'{len(issame)} pairs cannot be split into {num_folds} folds.')
    a = F.normalize(feats_a.double().cpu(), dim=1)
    b = F.normalize(feats_b.double().cpu(), dim=1)
    dist = ((a - b) ** 2).sum(dim=1)
    correct = (dist[None, :] < thresholds[:, None]) == issame[None, :]  # (T, P)
    folds = torch.arange(len(issame)).tensor_split(num_folds)
    accs, chosen = [], []
    for fold in folds:
        train = torch.ones(len(issame), dtype=torch.bool)
        train[fold] = False
        best = torch.argmax(correct[:, train].double().mean(dim=1))  # first best threshold
        accs.append(correct[best, fold].double().mean())
        chosen.append(thresholds[best])
    accs = torch.stack(accs)
    return {'accuracy': accs.mean().item(), 'accuracy_std': accs.std(unbiased=False).item(),
            'threshold': torch.stack(chosen).double().mean().item()}
