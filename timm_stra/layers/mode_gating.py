"""Mode attention's pooling and gating as one autograd node: its input's gradient in one product.

Mode attention reads its per-mode nodes S (the local attention's output) four times: the
mask branch, the pooling ``m = M S``, the affinities ``S [m, m']`` and the gated output
``Z = S + m alpha + m' alpha'``. Left to autograd, the last three each produce a full-size
gradient of S, summed in three passes over memory. Here they are one node whose backward
writes ``dS = dZ^T + [d affinity | M^T] [m, m', dm]^T`` with a single batched product (a
rank-3 update of the transposed output gradient), and finds the small gradients (of the
modal vectors, the gates and the gate norms) by replaying the gates in backward, which
reads S once more (``replay.py`` has the same pattern for the score branches; the gate
norms are replayed with ``NormReplay``: the forward's statistics, no second update).

Kept for backward: S (whatever saved-tensor hooks make of it: ``recompute_saved``,
checkpointing), the masks and the modal vectors. Double backward is refused.
"""
import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .autocast import AutocastState, without_autocast

# (nodes (B, G, N, n), modal vectors m (B, G, n), replay) -> affinity (B, G, N, k), k gates (B, G, H, W),
# vectors (B, G, n, k): k = 2 with the interaction unit (m, m'), 1 without (m)
Gates = Callable[[torch.Tensor, torch.Tensor, bool], Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor]]


def mode_gates(nodes: torch.Tensor, m: torch.Tensor, size: Tuple[int, int], gate_norm: Callable,
               interact_norm: Optional[Callable]) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor]:
    """The gates of mode attention (SPEC 1.2) from its nodes and modal vectors.

    ``interact_norm=None`` stops after the mode vector unit (no interaction).

    Shapes:
        nodes (B, G, N, n), m (B, G, n), size (H, W) with H*W = N -> affinity (B, G, N, k),
        k gates [alpha, alpha'] each (B, G, H, W), vectors [m, m'] (B, G, n, k); k = 2 with the
        interaction unit, else 1.
    """
    B, G, N, n = nodes.shape
    if interact_norm is None:
        vectors = m.unsqueeze(-1)
        affinity = torch.matmul(nodes, vectors)                              # e[g, i] = <m_g, S_g[:, i]>
        alpha = torch.sigmoid(gate_norm(affinity.reshape(B, G, *size)))
        return affinity, [alpha], vectors
    # mode interaction: P = softmax(sqrt(G) * l2normalize_rows(m m^T)), m' = P m
    paths = F.normalize(m @ m.transpose(1, 2), dim=-1)
    mixed = torch.softmax(paths * math.sqrt(G), dim=-1) @ m
    vectors = torch.stack([m, mixed], dim=-1)
    affinity = torch.matmul(nodes, vectors)                                  # one pass over S for both
    alpha = torch.sigmoid(gate_norm(affinity[..., 0].reshape(B, G, *size)))
    # Y_g = S_g + alpha m_g, so <m'_g, Y_g[:, i]> = <m'_g, S_g[:, i]> + alpha[g, i] <m'_g, m_g>
    second = affinity[..., 1] + alpha.view(B, G, N) * (mixed * m).sum(-1, keepdim=True)
    alpha2 = torch.sigmoid(interact_norm(second.reshape(B, G, *size)))
    return affinity, [alpha, alpha2], vectors


def stack_gates(gates: List[torch.Tensor]) -> torch.Tensor:
    """k gates (B, G, H, W) -> (B, G, k, N)."""
    return torch.stack([g.flatten(2) for g in gates], dim=2)


def gated_output(nodes: torch.Tensor, vectors: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``Z_g = S_g + sum_j vectors[..., j] (x) gates[:, :, j]`` as one product, laid out channels first.

    Shapes:
        nodes (B, G, N, n), vectors (B, G, n, k), gates (B, G, k, N) (``stack_gates``) -> (B*G, n, N), contiguous
    """
    B, G, N, n = nodes.shape
    k = vectors.shape[-1]
    return torch.baddbmm(nodes.transpose(2, 3).reshape(B * G, n, N), vectors.reshape(B * G, n, k),
                         gates.reshape(B * G, k, N).to(vectors.dtype))


class _ModeGating(torch.autograd.Function):
    """``m = M S``, the gates, and ``Z``; keeps S, M and m (see the module docstring)."""

    @staticmethod
    def forward(ctx, gates: Gates, nodes: torch.Tensor, masks: torch.Tensor, *params: torch.Tensor):
        m = torch.matmul(masks, nodes).squeeze(2)                            # modal vectors: B, G, n
        _, gate_maps, vectors = gates(nodes, m, False)
        out = gated_output(nodes, vectors, stack_gates(gate_maps))
        ctx.gates = gates
        ctx.params = params
        ctx.autocast = AutocastState(nodes.device.type)
        ctx.save_for_backward(nodes, masks, m)
        return out

    @staticmethod
    @once_differentiable
    @without_autocast
    def backward(ctx, grad_out: torch.Tensor):
        nodes, masks, m = ctx.saved_tensors
        B, G, N, n = nodes.shape
        dtype = grad_out.dtype  # the forward's compute dtype (autocast does not reach backward)
        with torch.enable_grad(), ctx.autocast():
            m_leaf = m.detach().requires_grad_()
            affinity, gate_maps, vectors = ctx.gates(nodes.detach(), m_leaf, True)
            # what Z reads of the replay: the gates and m' = vectors[..., 1] (m = vectors[..., 0] is the leaf)
            used = [*gate_maps, *vectors.unbind(-1)[1:]]
        k = vectors.shape[-1]
        grad_z = grad_out.view(B * G, n, N)
        vectors_c = vectors.detach().to(dtype).view(B * G, n, k)
        gates_c = stack_gates(gate_maps).detach().to(dtype).view(B * G, k, N)
        # Z = S^T + vectors @ gates: the gradients of the gates and of the vectors as used there
        grad_gates = torch.bmm(vectors_c.transpose(1, 2), grad_z).view(B, G, k, N)
        grad_vectors = torch.bmm(grad_z, gates_c.transpose(1, 2)).view(vectors.shape)
        # the gates and m' back to m, the affinities and the norms
        needs = ctx.needs_input_grad[3:]
        params = [p for p, need in zip(ctx.params, needs) if need]
        grads = [*(g.view_as(gate) for g, gate in zip(grad_gates.to(gate_maps[0].dtype).unbind(2), gate_maps)),
                 *grad_vectors.to(vectors.dtype).unbind(-1)[1:]]
        found = torch.autograd.grad(used, [m_leaf, affinity, *params], grads, allow_unused=True)
        grad_m = grad_vectors[..., 0] + found[0].to(dtype)
        grad_affinity = found[1].to(dtype)
        param_grads = iter(found[2:])
        grad_params = [next(param_grads) if need else None for need in needs]
        grad_nodes = grad_masks = None
        if ctx.needs_input_grad[1]:
            # dS = dZ^T + d affinity @ vectors^T + M^T dm: one product onto the transposed output gradient
            masks_t = masks.to(dtype).reshape(B * G, 1, N).transpose(1, 2)
            left = torch.cat([grad_affinity.reshape(B * G, N, k), masks_t], 2)
            right = torch.cat([vectors_c.transpose(1, 2), grad_m.reshape(B * G, 1, n)], 1)
            grad_nodes = torch.baddbmm(grad_z.transpose(1, 2), left, right).view(B, G, N, n).to(nodes.dtype)
        if ctx.needs_input_grad[2]:
            grad_masks = torch.matmul(grad_m.unsqueeze(2), nodes.to(dtype).transpose(2, 3)).to(masks.dtype)
        return (None, grad_nodes, grad_masks, *grad_params)


def mode_gating(gates: Gates, nodes: torch.Tensor, masks: torch.Tensor, params: List[torch.Tensor]) -> torch.Tensor:
    """Pool the modal vectors, gate and add them: the output of mode attention, as one autograd node.

    Args:
        gates: ``gates(nodes, m, replay)`` -> (affinity, gates, vectors) as ``mode_gates`` returns them; with
            ``replay`` (in backward, autograd on) it must compute with the norms as the forward saw them
            (``NormReplay``) and update nothing.
        nodes: (B, G, N, n) per-mode nodes S, any strides with the channels or the positions unit-strided.
        masks: (B, G, 1, N) spatial masks M.
        params: every tensor ``gates`` uses that may need a gradient (the gate norms' affine parameters).

    Returns:
        (B*G, n, N) output Z, channels first, contiguous.
    """
    return _ModeGating.apply(gates, nodes, masks, *params)
