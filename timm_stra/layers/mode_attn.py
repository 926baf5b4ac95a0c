"""Mode attention, the second half of StRA (Eq. 3 of the paper, SPEC 1.2).

G soft spatial masks pool the input into G modal vectors; every position is
gated towards the modal vector of its mode (mode vector unit), then the modes
exchange information and every position is gated towards the mixed modal vector
(mode interaction unit). Channels are grouped contiguously: channel c belongs to
mode c // (C / G).
"""
from typing import Final, Tuple

import torch
from torch import nn

from .checks import check_divisible, check_feature_map, check_per_mode_map
from .diversity import DiversityRecorder
from .mode_gating import gated_output, mode_gating, mode_interaction, stack_gates
from .replay import replayable_norm
from .score_branch import ScoreBranch
from .tracing import eager_autograd

# fx leaves for plain torch.fx too, not only timm's tracer (register_notrace_function): layers/tracing.py
torch.fx.wrap('check_feature_map')
torch.fx.wrap('check_per_mode_map')


class ModeAttention(nn.Module):
    """StRA mode attention.

    Args:
        dim: channels C, divisible by ``groups``.
        groups: number of modes G.
        interaction: apply the mode interaction unit (``False`` is the paper's
            "without interaction" ablation, which stops after the mode vector unit).
        per_mode: take the input laid out channels last within each mode, as
            ``LocalAttention(per_mode=True)`` returns it (the output is not).
        recompute: the mask branch recomputes its hidden maps in backward (``ScoreBranch``).

    Subclasses set ``fast_convs = False`` to keep the mask branch's grouped 1x1 convolutions
    plain ``nn.Conv2d`` layers (see ``ScoreBranch``).

    Shapes:
        (B, C, H, W) -> (B, C, H, W); ``per_mode``: (B, G, H, W, C / G) -> (B, C, H, W)
    """
    fast_convs = True
    per_mode: Final[bool]

    def __init__(
            self,
            dim: int,
            groups: int = 8,
            interaction: bool = True,
            per_mode: bool = False,
            recompute: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_divisible(dim, groups, 'ModeAttention')
        self.dim = dim
        self.groups = groups
        self.interaction = interaction
        self.per_mode = per_mode
        self.mask = ScoreBranch(dim, 8 * groups, groups, groups, fast=self.fast_convs, recompute=recompute, **dd)
        self.diversity = DiversityRecorder()
        self.gate_norm = nn.BatchNorm2d(groups, **dd)
        self.interact_norm = nn.BatchNorm2d(groups, **dd) if interaction else nn.Identity()

    def spatial_masks(self, x: torch.Tensor) -> torch.Tensor:
        """Soft spatial masks M, one per mode, each summing to 1 over the H*W positions.

        Args:
            x: the module's input as ``forward`` takes it: (B, C, H, W), or (B, G, H, W, C / G) if ``per_mode``.

        Returns:
            (B, G, H, W) masks (float32 softmax statistics, cast back to the input dtype).
        """
        nodes, height, width = self._nodes(x)
        return self._masks(nodes, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes, height, width = self._nodes(x)
        return self._attend(nodes, height, width)

    def _nodes(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """The input as per-mode nodes (B, G, H*W, C / G), a view, with H and W."""
        if self.per_mode:
            check_per_mode_map(x, self.groups, self.dim, 'ModeAttention')
            B, G, H, W, n = x.shape
            return x.reshape(B, G, H * W, n), H, W
        check_feature_map(x, self.dim, 'ModeAttention')
        B, C, H, W = x.shape
        return x.reshape(B, self.groups, C // self.groups, H * W).transpose(2, 3), H, W

    def _masks(self, nodes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        logits = self.mask(nodes.transpose(2, 3), (height, width))
        return _normalize_masks(logits, nodes.dtype)

    def _attend(self, nodes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Mode attention of per-mode nodes: S_g[:, i] is ``nodes[b, g, i]``.

        Every product reads ``nodes`` through its strides, so channels-first input (a transposed
        view) and per-mode channels-last input take the same path; the gating product writes the
        output channels first either way. When an eager forward records gradients (and the gate
        norms are plain ``BatchNorm2d``, which can be replayed), pooling, gates and output are one
        autograd node (``mode_gating.py``, the same computation as below, with a hand-written backward);
        this plain path serves the rest (inference, TorchScript, torch.fx, torch.compile, frozen norms).

        Args:
            nodes: (B, G, H*W, C / G), any strides with the channels or the positions unit-strided.

        Returns:
            (B, C, H, W), contiguous.
        """
        B, G, N, n = nodes.shape
        masks = self.diversity(self._masks(nodes, height, width)).view(B, G, 1, N)
        if not torch.jit.is_scripting() and self._gates_in_one_node(nodes):
            return self._gated_in_one_node(nodes, masks, height, width).view(B, G * n, height, width)
        m = torch.matmul(masks, nodes).squeeze(2)                       # modal vectors: B, G, n
        if not self.interaction:
            # e[g, i] = <m_g, S_g[:, i]>, alpha = sigmoid(BN(e)), Y_g = S_g + alpha m_g
            affinity = torch.matmul(nodes, m.unsqueeze(-1))             # B, G, N, 1
            alpha = torch.sigmoid(self.gate_norm(affinity.reshape(B, G, height, width)))
            return gated_output(nodes, m.unsqueeze(-1), stack_gates([alpha])).reshape(B, G * n, height, width)
        mixed = mode_interaction(m)[0]                                   # m' = P m: B, G, n
        # one pass over S gives e[g, i] = <m_g, S_g[:, i]> and <m'_g, S_g[:, i]>
        vectors = torch.stack([m, mixed], dim=-1)
        affinity = torch.matmul(nodes, vectors)                          # B, G, N, 2
        alpha = torch.sigmoid(self.gate_norm(affinity[..., 0].reshape(B, G, height, width)))
        # Y_g = S_g + alpha m_g, so <m'_g, Y_g[:, i]> = <m'_g, S_g[:, i]> + alpha[g, i] <m'_g, m_g>
        second = affinity[..., 1] + alpha.view(B, G, N) * (mixed * m).sum(-1, keepdim=True)
        alpha2 = torch.sigmoid(self.interact_norm(second.reshape(B, G, height, width)))
        # Z_g = Y_g + alpha' m'_g = S_g + alpha m_g + alpha' m'_g
        # (reshape: a view of the contiguous product, which vmap may hold with its batch dimension elsewhere)
        return gated_output(nodes, vectors, stack_gates([alpha, alpha2])).reshape(B, G * n, height, width)

    @torch.jit.unused
    def _gates_in_one_node(self, nodes: torch.Tensor) -> bool:
        return eager_autograd(nodes) and replayable_norm(self.gate_norm) and (
            not self.interaction or replayable_norm(self.interact_norm))

    @torch.jit.unused
    def _gated_in_one_node(self, nodes: torch.Tensor, masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Pooling, gates and output as one autograd node (``mode_gating``): (B, G, N, n) -> (B*G, n, N)."""
        B, G, N, _ = nodes.shape
        interact_norm = self.interact_norm if self.interaction else None
        return mode_gating(nodes, masks.view(B, G, height, width), self.gate_norm, interact_norm)


def _normalize_masks(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, G, H, W) mask logits -> masks summing to 1 over the positions (float32 softmax, cast to ``dtype``)."""
    masks = torch.softmax(logits.flatten(2), dim=-1, dtype=torch.promote_types(dtype, torch.float32)).to(dtype)
    return masks.view_as(logits)
