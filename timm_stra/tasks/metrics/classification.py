"""Top-1 accuracy for facial expression recognition (SPEC 5)."""
import torch


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose highest logit is their label.

    Args:
        logits: (N, num_classes).
        labels: (N,) integer classes.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f'top1_accuracy: logits of shape {tuple(logits.shape)} and labels of shape '
                         f'{tuple(labels.shape)}: give (N, num_classes) logits and (N,) labels.')
    if len(labels) == 0:
        raise ValueError('top-1 accuracy of an empty set')
    return (logits.argmax(dim=1) == labels.to(logits.device)).double().mean().item()
