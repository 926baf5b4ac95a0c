"""Mode attention's pooling and gating as one autograd node with a hand-written backward.

Mode attention reads its per-mode nodes S (the local attention's output) four times: the
mask branch, the pooling ``m = M S``, the affinities ``S [m, m']`` and the gated output
``Z = S + m alpha + m' alpha'``. Left to autograd, the last three each produce a full-size
gradient of S, summed in three passes over memory. Here they are one node whose backward

* writes ``dS = dZ^T + [d affinity | M^T] [m, m', dm]^T`` with a single batched product (a
  rank-3 update of the transposed output gradient), and
* finds the small gradients (of the gates, the gate norms, the modal vectors and the mode
  interaction) by hand from what the forward kept of them: no replay of the gates, no
  ``autograd.grad``, one read of S for the affinities' share of the modal vectors' gradient.
  (Replaying the gates and differentiating them with autograd took 68 more dispatched ops in
  mode attention's backward, 259 against 191, and on a GPU each op is a launch from Python.)

The gate norms' backward uses the norms as the forward saw them (``NormReplay``: its
parameters, its mode and, in eval mode, its running statistics of that time) and the kernel
autograd would. The other small maps' gradients are computed in float32 (float64 for a
float64 model) whatever the compute dtype.

Kept for backward: S (whatever saved-tensor hooks make of it: ``recompute_saved``,
checkpointing), the masks, and the gates' small tensors (B x G x H x W maps and B x G x G
interaction weights). Double backward is refused.
"""
import math
from typing import List, Optional, Tuple

import torch

from .autocast import without_autocast
from .first_order import first_order_only
from .replay import NormReplay

# F.normalize's default: the row norm of the interaction affinities is clamped to it
NORMALIZE_EPS = 1e-12


def stack_gates(gates: List[torch.Tensor]) -> torch.Tensor:
    """k gates (B, G, H, W) -> (B, G, k, N)."""
    return torch.stack([g.flatten(2) for g in gates], dim=2)


def mode_interaction(m: torch.Tensor, eps: float = NORMALIZE_EPS
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mode interaction's mixed vectors ``m' = P m``, ``P = softmax(sqrt(G) * l2normalize_rows(m m^T))``
    (``F.normalize``'s arithmetic and its clamp ``eps`` of the row norms), with what its backward needs.

    The normalisation and the softmax run in float32 at least: in float16 ``F.normalize``'s 1e-12 clamp is 0, and
    a zero modal vector gave 0 / 0.

    Shapes:
        m (B, G, n) -> m' (B, G, n); row norms of m m^T (B, G, 1), its normalised rows and P (B, G, G)
    """
    G = m.shape[1]
    paths = (m @ m.transpose(1, 2)).to(torch.promote_types(m.dtype, torch.float32))
    length = torch.linalg.vector_norm(paths, 2., dim=-1, keepdim=True)
    unit = paths / length.clamp_min(eps)
    weights = torch.softmax(unit * math.sqrt(G), dim=-1)
    return weights.to(m.dtype) @ m, length, unit, weights


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
    """``m = M S``, the gates and ``Z``; keeps S, M and the gates' small tensors (see the module docstring).

    Inputs after ``norms`` (the forward's norm modules, then their ``NormReplay``): nodes, masks and the
    norms' weights and biases, two per norm (``None`` where a norm has none).
    """

    @staticmethod
    def forward(ctx, norms: Tuple[List[torch.nn.Module], List[NormReplay]], nodes: torch.Tensor,
                masks: torch.Tensor, *params: Optional[torch.Tensor]):
        modules, replays = norms
        B, G, N, n = nodes.shape
        H, W = masks.shape[-2:]
        m = torch.matmul(masks.view(B, G, 1, N), nodes).squeeze(2)          # modal vectors: B, G, n
        saved: List[torch.Tensor] = []
        if len(modules) == 1:
            vectors = m.unsqueeze(-1)
        else:
            mixed, length, unit, weights = mode_interaction(m)
            vectors = torch.stack([m, mixed], dim=-1)
            saved = [length, unit, weights]
        affinity = torch.matmul(nodes, vectors)                             # e = <vectors_g, S_g[:, i]>: B, G, N, k
        inputs = [affinity[..., 0].reshape(B, G, H, W)]                     # the gate norms' inputs
        alpha = torch.sigmoid(modules[0](inputs[0]))
        gates = [alpha]
        if len(modules) == 2:
            # Y_g = S_g + alpha m_g, so <m'_g, Y_g[:, i]> = <m'_g, S_g[:, i]> + alpha[g, i] <m'_g, m_g>
            overlap = (vectors[..., 1] * m).sum(-1, keepdim=True)            # B, G, 1
            inputs.append((affinity[..., 1] + alpha.view(B, G, N) * overlap).view(B, G, H, W))
            gates.append(torch.sigmoid(modules[1](inputs[1])))
            saved.append(overlap)
        stacked = stack_gates(gates)
        out = gated_output(nodes, vectors, stacked)
        ctx.replays = replays
        # the norms' parameters too, only for autograd's check that nothing changed them in place before backward
        ctx.save_for_backward(nodes, masks, vectors, stacked, *inputs, *saved, *(p for p in params if p is not None))
        return out

    @staticmethod
    @first_order_only
    @without_autocast
    def backward(ctx, grad_out: torch.Tensor):
        nodes, masks, vectors, stacked, *rest = ctx.saved_tensors
        replays: List[NormReplay] = ctx.replays
        k = len(replays)
        inputs, (length, unit, weights, overlap) = rest[:k], (rest[k:k + 4] if k == 2 else (None,) * 4)
        B, G, N, n = nodes.shape
        dtype = grad_out.dtype  # the forward's compute dtype (autocast does not reach backward)
        acc = torch.promote_types(dtype, torch.float32)  # the small maps' dtype here
        grad_z = grad_out.view(B * G, n, N)
        vectors_c = vectors.to(dtype).view(B * G, n, k)
        # Z = S^T + vectors @ gates: the gradients of the gates and of the vectors as used there
        grad_gates = torch.bmm(vectors_c.transpose(1, 2), grad_z).view(B, G, k, N).to(acc)
        grad_vectors = torch.bmm(grad_z, stacked.to(dtype).view(B * G, k, N).transpose(1, 2)).view(B, G, n, k)
        gates = stacked.to(acc).unbind(2)
        needs = ctx.needs_input_grad[3:]
        param_grads: List[Optional[torch.Tensor]] = [None] * len(needs)
        # the gates back to their norms' inputs (the affinities, but for the second gate's alpha * <m', m>)
        grad_alpha, grad_overlap = grad_gates[:, :, 0], None
        grad_inputs: List[torch.Tensor] = []
        if k == 2:
            grad_second, param_grads[2], param_grads[3] = _gate_backward(
                replays[1], grad_gates[:, :, 1], gates[1], inputs[1], needs[2:4])
            grad_overlap = (grad_second * gates[0]).sum(-1, keepdim=True)
            grad_alpha = torch.addcmul(grad_alpha, grad_second, overlap.to(acc))
            grad_inputs.append(grad_second)
        grad_first, param_grads[0], param_grads[1] = _gate_backward(
            replays[0], grad_alpha, gates[0], inputs[0], needs[0:2])
        grad_inputs.insert(0, grad_first)
        grad_affinity = torch.stack(grad_inputs, dim=-1).to(dtype)          # B, G, N, k
        # the vectors: through Z, and through the affinities e = S^T vectors (one read of S)
        nodes_c = nodes.to(dtype)  # a copy only where autocast computed in another dtype than S's
        grad_vectors = grad_vectors.add_(torch.matmul(nodes_c.transpose(2, 3), grad_affinity)).to(acc)
        grad_m = grad_vectors[..., 0]
        if k == 2:
            m, mixed = vectors.to(acc).unbind(-1)
            grad_m = _interaction_backward(grad_m, grad_vectors[..., 1], grad_overlap, m, mixed, length.to(acc),
                                           unit.to(acc), weights.to(acc))
        grad_m = grad_m.to(dtype)
        grad_nodes = grad_masks = None
        if ctx.needs_input_grad[1]:
            # dS = dZ^T + d affinity @ vectors^T + M^T dm: one product onto the transposed output gradient
            masks_t = masks.to(dtype).reshape(B * G, 1, N).transpose(1, 2)
            left = torch.cat([grad_affinity.reshape(B * G, N, k), masks_t], 2)
            right = torch.cat([vectors_c.transpose(1, 2), grad_m.reshape(B * G, 1, n)], 1)
            grad_nodes = torch.baddbmm(grad_z.transpose(1, 2), left, right).view(B, G, N, n).to(nodes.dtype)
        if ctx.needs_input_grad[2]:
            grad_masks = torch.matmul(grad_m.unsqueeze(2), nodes_c.transpose(2, 3))
            grad_masks = grad_masks.view(masks.shape).to(masks.dtype)
        return (None, grad_nodes, grad_masks, *param_grads)


def _gate_backward(norm: NormReplay, grad_gate: torch.Tensor, gate: torch.Tensor, x: torch.Tensor,
                   needs: Tuple[bool, ...]) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``gate = sigmoid(norm(x))`` back to x and the norm's weight and bias (where ``needs`` says): the sigmoid in
    the dtype of ``grad_gate``, the norm in the forward's (``x``'s), as autograd would.

    Shapes:
        grad_gate, gate (B, G, N); x (B, G, H, W) -> (B, G, N), (G,), (G,)
    """
    saved = norm.forward_saving(x)[1]  # the forward's batch statistics, as its kernel computed them
    grad_norm = torch.ops.aten.sigmoid_backward(grad_gate, gate).view(x.shape)
    grad_x, grad_weight, grad_bias = norm.backward(grad_norm.to(x.dtype), x, saved, needs)
    return grad_x.view(gate.shape).to(grad_gate.dtype), grad_weight, grad_bias


def _interaction_backward(grad_m: torch.Tensor, grad_mixed: torch.Tensor, grad_overlap: torch.Tensor,
                          m: torch.Tensor, mixed: torch.Tensor, length: torch.Tensor, unit: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
    """The modal vectors' whole gradient, given those of m and m' = P m as used downstream and that of <m', m>.

    ``P = softmax(sqrt(G) * unit)``, ``unit = R / max(length, eps)``, ``R = m m^T``, ``length`` = R's row norms.

    Shapes:
        grad_m, grad_mixed, m, mixed (B, G, n); grad_overlap, length (B, G, 1); unit, weights (B, G, G) -> (B, G, n)
    """
    G = m.shape[1]
    grad_m = torch.addcmul(grad_m, grad_overlap, mixed)                     # d<m', m>/dm = m'
    grad_mixed = torch.addcmul(grad_mixed, grad_overlap, m)                 # d<m', m>/dm' = m
    grad_m = torch.baddbmm(grad_m, weights.transpose(1, 2), grad_mixed)     # m' = P m
    grad_logits = torch._softmax_backward_data(grad_mixed @ m.transpose(1, 2), weights, -1, weights.dtype)
    grad_unit = grad_logits * math.sqrt(G)
    # unit = R / length where length > eps (the radial part of the gradient drops out), R / eps elsewhere
    radial = (grad_unit * unit).sum(-1, keepdim=True) * (length > NORMALIZE_EPS)
    grad_paths = torch.addcmul(grad_unit, unit, radial, value=-1) / length.clamp_min(NORMALIZE_EPS)
    return torch.baddbmm(grad_m, grad_paths + grad_paths.transpose(1, 2), m)  # R = m m^T


def mode_gating(nodes: torch.Tensor, masks: torch.Tensor, gate_norm: torch.nn.Module,
                interact_norm: Optional[torch.nn.Module]) -> torch.Tensor:
    """Pool the modal vectors, gate and add them: the output of mode attention, as one autograd node.

    Args:
        nodes: (B, G, N, n) per-mode nodes S, any strides with the channels or the positions unit-strided.
        masks: (B, G, H, W) spatial masks M, H * W = N.
        gate_norm: the mode vector unit's norm, a plain ``nn.BatchNorm2d`` (``replayable_norm``): the forward
            runs it (updating its running statistics), the backward differentiates it as the forward saw it.
        interact_norm: the mode interaction unit's norm, or ``None`` to stop after the mode vector unit.

    Returns:
        (B*G, n, N) output Z, channels first, contiguous.
    """
    modules = [gate_norm] if interact_norm is None else [gate_norm, interact_norm]
    replays = [NormReplay(norm) for norm in modules]  # read before the forward runs them (see replay.py)
    params = [t for replay in replays for t in (replay.weight, replay.bias)]
    return _ModeGating.apply((modules, replays), nodes, masks, *params)
