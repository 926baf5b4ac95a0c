"""Mode attention, the second half of StRA (Eq. 3 of the paper, SPEC 1.2).

G soft spatial masks pool the input into G modal vectors; every position is
gated towards the modal vector of its mode (mode vector unit), then the modes
exchange information and every position is gated towards the mixed modal vector
(mode interaction unit). Channels are grouped contiguously: channel c belongs to
mode c // (C / G).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_divisible
from .diversity import DiversityRecorder
from .score_branch import ScoreBranch


class ModeAttention(nn.Module):
    """StRA mode attention.

    Args:
        dim: channels C, divisible by ``groups``.
        groups: number of modes G.
        interaction: apply the mode interaction unit (``False`` is the paper's
            "without interaction" ablation, which stops after the mode vector unit).

    Shapes:
        (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, dim: int, groups: int = 8, interaction: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_divisible(dim, groups, 'ModeAttention')
        self.dim = dim
        self.groups = groups
        self.interaction = interaction
        self.mask = ScoreBranch(dim, 8 * groups, groups, groups, **dd)
        self.diversity = DiversityRecorder()
        self.gate_norm = nn.BatchNorm2d(groups, **dd)
        self.interact_norm = nn.BatchNorm2d(groups, **dd) if interaction else nn.Identity()

    def spatial_masks(self, x: torch.Tensor) -> torch.Tensor:
        """Soft spatial masks M, one per mode, each summing to 1 over the H*W positions.

        Args:
            x: (B, C, H, W).

        Returns:
            (B, G, H, W) masks (float32 softmax statistics, cast back to the input dtype).
        """
        logits = self.mask(x)
        masks = torch.softmax(logits.flatten(2), dim=-1, dtype=torch.float32).to(x.dtype)
        return masks.view_as(logits)

    @staticmethod
    def _affinity(modal: torch.Tensor, nodes: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """<modal_g, nodes_g[:, i]> for every mode g and position i: (B, G, n), (B, G, n, N) -> (B, G, H, W)."""
        B, G = modal.shape[0], modal.shape[1]
        return (modal.unsqueeze(2) @ nodes).view(B, G, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        G = self.groups
        masks = self.diversity(self.spatial_masks(x)).view(B, G, H * W)
        nodes = x.reshape(B, G, C // G, H * W)                    # B, G, n, N
        modal = (nodes @ masks.unsqueeze(-1)).squeeze(-1)         # B, G, n
        # mode vector unit: Y_g = S_g + alpha[g] * m_g, alpha = sigmoid(BN(<m_g, S_g[:, i]>))
        alpha = torch.sigmoid(self.gate_norm(self._affinity(modal, nodes, H, W))).view(B, G, 1, H * W)
        y = nodes + alpha * modal.unsqueeze(-1)
        if not self.interaction:
            return y.reshape(B, C, H, W)
        # mode interaction unit: P = softmax(sqrt(G) * l2normalize_rows(m m^T)); m' = P m
        paths = F.normalize(modal @ modal.transpose(1, 2), dim=-1)
        mixed = torch.softmax(paths * math.sqrt(G), dim=-1) @ modal     # B, G, n
        alpha = torch.sigmoid(self.interact_norm(self._affinity(mixed, y, H, W))).view(B, G, 1, H * W)
        z = y + alpha * mixed.unsqueeze(-1)
        return z.reshape(B, C, H, W)
