"""Top-1 accuracy for facial expression recognition (SPEC 5)."""
import torch


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose highest logit is their label.

    Args:
        logits: (N, num_classes).
        labels: (N,) integer classes.
    """
    if len(labels) == 0:
        raise ValueError('top-1 accuracy of an empty set')
    return (logits.argmax(dim=1) == labels.to(logits.device)).double().mean().item()
