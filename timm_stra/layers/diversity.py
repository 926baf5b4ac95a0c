"""The diversity regularisation of StRA's spatial masks (SPEC 1.3).

``L_d = G - sum_i max_g M[g, i]`` for each sample: zero only when the G masks
put all their mass on disjoint positions, ``G - 1`` at most when they coincide.
"""
from typing import Dict

import torch
from timm.layers import register_notrace_module
from torch import nn

from .tracing import is_compiling, is_fx_symbolic_tracing


def mask_diversity(masks: torch.Tensor) -> torch.Tensor:
    """Per-sample diversity term of a set of spatial masks.

    Args:
        masks: (B, G, H, W) or (B, G, N) masks, each summing to 1 over its positions.

    Returns:
        (B,) float32 tensor ``G - sum_i max_g masks[b, g, i]``.
    """
    flat = masks.flatten(2).float()
    return flat.shape[1] - flat.amax(dim=1).sum(dim=-1)


@register_notrace_module  # timm's fx feature extraction keeps it a module, so a traced model still records
class DiversityRecorder(nn.Module):
    """Identity on the spatial masks that keeps each sample's diversity term.

    In training mode the per-sample term of the batch just seen is kept, keyed by
    device, so that ``timm_stra.diversity_loss(model)`` can read it after the
    forward pass. DataParallel replicas share the dict (they copy the module's
    ``__dict__`` shallowly), so each replica's slice of the batch is kept under its
    device. Nothing is computed in eval mode or under TorchScript (``diversity_loss`` refuses a
    scripted model), nothing kept while fx traces it (every fx tracer keeps it whole: timm's by
    ``register_notrace_module``, the others by ``_traced_call``) or when gradient checkpointing runs
    the forward again during backward (that term would outlive the step, holding the recomputed graph); a copy of
    the module keeps nothing (``__getstate__``). A forward
    hook on this module sees the masks themselves, in any mode (``timm-stra modes`` draws them:
    ``tools/mode_maps.py``).

    Shapes:
        (B, G, H, W) -> (B, G, H, W), unchanged.
    """

    def __init__(self):
        super().__init__()
        self.kept: Dict[str, torch.Tensor] = {}

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._traced_through(masks):
            return self._traced_call(masks)
        if self.training and not torch.jit.is_scripting():
            term = mask_diversity(masks)  # computed in a recomputation too: checkpointing checks what the ops save
            if _keeps_term():
                self.kept[str(masks.device)] = term
        return masks

    def __getstate__(self):
        """A copy (``copy.deepcopy``: ``timm.utils.ModelEmaV3``, ``AveragedModel``) or pickle of the module keeps
        nothing: a term belongs to the forward pass that computed it, whose autograd graph cannot be copied."""
        return {**super().__getstate__(), 'kept': {}}

    @torch.jit.unused
    def _traced_through(self, masks: torch.Tensor) -> bool:
        """Whether an fx tracer that does not keep this module whole (plain ``torch.fx``, torchvision's feature
        extraction; timm's keeps it, ``register_notrace_module``) is tracing into its forward."""
        return isinstance(masks, torch.fx.Proxy)

    @torch.jit.unused
    def _traced_call(self, masks: torch.Tensor) -> torch.Tensor:
        """Record a call of this module in the traced graph, as timm's tracer does, instead of its inside: the
        traced model then runs it and keeps the term (``diversity_loss`` would otherwise read nothing from it)."""
        tracer = masks.tracer
        path_of_module = getattr(tracer, 'path_of_module', None)  # (an fx graph pass's tracer has none)
        path = path_of_module(self) if path_of_module is not None else ''
        if not path:  # the traced root itself, or no module tree to name it in: an identity, as before
            return masks
        return tracer.create_proxy('call_module', path, (masks,), {})


@torch.jit.unused  # TorchScript never gets here (the caller tests torch.jit.is_scripting() first)
def _keeps_term() -> bool:
    """Whether a term computed now is kept: not while fx traces (it would be a Proxy), nor while autograd's
    engine runs a backward pass on this thread, as when a checkpointed block recomputes its forward. (A compiled
    graph recomputes without running this code again.)"""
    if is_fx_symbolic_tracing():
        return False
    if is_compiling():
        return True
    return torch._C._current_graph_task_id() == -1  # no public query exists
