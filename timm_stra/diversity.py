"""Reading the diversity regularisation term out of a model after its forward pass (SPEC 1.3).

Every StRA operator keeps the per-sample term of its last training-mode forward
(``DiversityRecorder``); ``diversity_loss`` gathers them. No module-level state:
the terms live on the operators, so the loss is right for any batch size, for
several models at once, under DDP (each process reads its own replica), under
DataParallel (each device's slice is kept under its device) and under
``torch.compile``; nothing is computed in eval mode.
"""
from typing import List, Tuple

import torch
from torch import nn

from .layers.diversity import DiversityRecorder


def _recorders(model: nn.Module) -> List[Tuple[str, nn.Module, DiversityRecorder]]:
    """Every ``DiversityRecorder`` of ``model``, with the name and module of its holder (its StRA operator's mode
    attention)."""
    return [(name, owner, child) for name, owner in model.named_modules() for child in owner.children()
            if isinstance(child, DiversityRecorder)]


def _check_recorded(pairs: List[Tuple[str, nn.Module, DiversityRecorder]]) -> None:
    """Every operator must hold a term: one missing would drop its masks' regulariser from the loss unseen."""
    missing = [name or type(owner).__name__ for name, owner, recorder in pairs if not recorder.kept]
    if len(missing) == len(pairs):
        raise RuntimeError(
            'No diversity term recorded: call diversity_loss(model) once after each training-mode forward '
            '(model.train()); eval-mode forwards do not compute it.')
    if missing:
        others = len(pairs) - len(missing)
        raise RuntimeError(
            f'No diversity term recorded by {", ".join(missing)}, where the model\'s {others} other StRA '
            f'operator{"s" if others > 1 else ""} recorded one: these did not run in training mode (set to eval() '
            'on their own?) or did not run at all. Put the whole model in training mode, or freeze their parameters '
            '(requires_grad_(False)) and keep them training.')


def _check_gradients(pairs: List[Tuple[str, nn.Module, DiversityRecorder]]) -> None:
    """With gradients on, a term must carry them wherever its masks have parameters to train (the mask branch of
    the mode attention that holds the recorder)."""
    for _, owner, recorder in pairs:
        masks = getattr(owner, 'mask', owner)
        if any(not t.requires_grad for t in recorder.kept.values()) and \
                any(p.requires_grad for p in masks.parameters()):
            raise RuntimeError(
                'The diversity term was computed without gradients, so it cannot train the spatial masks: the '
                'training-mode forward ran under torch.no_grad(), or in a block under reentrant gradient '
                'checkpointing (use_reentrant=True, or TIMM_REENTRANT_CKPT set), whose forward runs without them. '
                'Use non-reentrant checkpointing (timm\'s default), or read the term under torch.no_grad() if '
                'it is only for logging.')


def _refuse_torchscript(model: nn.Module) -> None:
    """A scripted StRA model records no term (TorchScript runs the recorders as identities): refused, rather than
    a loss of 0 that would train the masks without their regulariser."""
    if any(isinstance(m, torch.jit.ScriptModule) and getattr(m, 'original_name', '') == DiversityRecorder.__name__
           for m in model.modules()):
        raise RuntimeError(
            'diversity_loss cannot read a TorchScript model: scripted StRA operators record no diversity term. '
            'Train the eager model (or a torch.compile\'d one) and script it for inference.')


def diversity_per_sample(model: nn.Module) -> torch.Tensor:
    """Per-sample sum over all StRA operators of the last training-mode forward, and forget it.

    Returns:
        (B,) float32 tensor (samples of a DataParallel batch in device order), or an
        empty tensor for a model without mode attention (e.g. a ResNet twin).

    Raises:
        RuntimeError: the model is TorchScript (whose operators record nothing); one of its StRA operators
            holds no term (none: no training-mode forward ran since the last read; some: the others did not
            run in training mode, named in the message); or, read with gradients on, a term has none while
            its masks have parameters to train (see ``_check_gradients``).
    """
    _refuse_torchscript(model)
    pairs = _recorders(model)
    recorders = [r for _, _, r in pairs]
    if not recorders:
        param = next(model.parameters(), None)
        return torch.zeros(0, device=param.device if param is not None else None)
    _check_recorded(pairs)
    kept = [r.kept for r in recorders]
    if torch.is_grad_enabled():
        _check_gradients(pairs)
    devices = sorted(kept[0], key=lambda d: torch.device(d).index or 0)
    target = kept[0][devices[0]].device
    per_sample = torch.cat([
        torch.stack([k[d] for k in kept]).sum(dim=0).to(target) for d in devices])
    for r in recorders:
        r.kept.clear()
    return per_sample


def diversity_loss(model: nn.Module) -> torch.Tensor:
    """Diversity term of the last training-mode forward: batch mean of the per-sample sum over operators.

    Add it to the task loss with its weight (1.0 for ReID and FER, 0.1 for face):
    ``loss = criterion(logits, target) + weight * timm_stra.diversity_loss(model)``.
    Reading it clears what the operators kept. A model without mode attention gives 0.
    """
    per_sample = diversity_per_sample(model)
    if per_sample.numel() == 0:
        return per_sample.sum()
    return per_sample.mean()
