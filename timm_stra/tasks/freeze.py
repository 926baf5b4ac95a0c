"""Training only some top-level modules: the ReID warm-up (SPEC 4).

For the first 8 epochs of the ReID recipe only ``layer4``, ``neck`` and ``fc`` train (the
official run opens layer4, the embedding and the classifier). The other modules get no
gradients and stay in eval mode, so their BatchNorm statistics do not move either. A frozen
StRA stage still records its diversity term (its ``DiversityRecorder`` stays in training mode:
it has no parameters or statistics), which trains whatever before it does train, and is
there for the loss to read.
"""
from typing import Optional, Sequence

from torch import nn

from ..layers.diversity import DiversityRecorder


def set_trainable(model: nn.Module, names: Optional[Sequence[str]] = None) -> None:
    """Make only the top-level children ``names`` trainable (all of them when ``names`` is None).

    Call after ``model.train()``: frozen children are put back in eval mode, but for their diversity
    recorders.

    Raises:
        ValueError: as ``check_trainable``.
    """
    children = dict(model.named_children())
    if names is not None:
        check_trainable(model, names)
    for name, child in children.items():
        trainable = names is None or name in names
        child.requires_grad_(trainable)
        if not trainable:
            child.eval()
            for module in child.modules():
                if isinstance(module, DiversityRecorder):
                    module.train()


def check_trainable(model: nn.Module, names: Sequence[str]) -> None:
    """Raise a ``ValueError`` unless ``names`` are top-level children of ``model`` that hold parameters to train.

    ``model`` may have another classifier width than the one trained (only the names and what they hold matter).
    """
    children = dict(model.named_children())
    unknown = sorted(set(names) - set(children))
    if unknown:
        raise ValueError(f'{unknown} are not modules of {type(model).__name__} (it has {sorted(children)}).')
    if not any(p.numel() for name in names for p in children[name].parameters()):
        with_params = [name for name, child in children.items() if any(True for _ in child.parameters())]
        raise ValueError(f'{sorted(names) or "no modules"}: nothing to train during the frozen epochs (no '
                         f'parameters); name some of {with_params}.')
