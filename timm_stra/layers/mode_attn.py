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

    Subclasses set ``fast_convs = False`` to keep the mask branch's grouped 1x1 convolutions
    plain ``nn.Conv2d`` layers (see ``ScoreBranch``).

    Shapes:
        (B, C, H, W) -> (B, C, H, W)
    """
    fast_convs = True

    def __init__(self, dim: int, groups: int = 8, interaction: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_divisible(dim, groups, 'ModeAttention')
        self.dim = dim
        self.groups = groups
        self.interaction = interaction
        self.mask = ScoreBranch(dim, 8 * groups, groups, groups, fast=self.fast_convs, **dd)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        G, N = self.groups, H * W
        masks = self.diversity(self.spatial_masks(x)).view(B, G, N, 1)
        nodes = x.reshape(B, G, C // G, N)                              # S: B, G, n, N
        m = torch.matmul(nodes, masks).squeeze(-1)                      # modal vectors: B, G, n
        if not self.interaction:
            # Y_g = S_g + alpha[g] * m_g, alpha = sigmoid(BN(<m_g, S_g[:, i]>))
            affinity = torch.matmul(m.unsqueeze(2), nodes).view(B, G, H, W)
            alpha = torch.sigmoid(self.gate_norm(affinity)).view(B, G, 1, N)
            return torch.addcmul(nodes, m.unsqueeze(-1), alpha).view(B, C, H, W)
        # mode interaction: P = softmax(sqrt(G) * l2normalize_rows(m m^T)), m' = P m
        paths = F.normalize(m @ m.transpose(1, 2), dim=-1)
        mixed = torch.softmax(paths * math.sqrt(G), dim=-1) @ m        # m': B, G, n
        # one pass over S gives <m_g, S_g[:, i]> and <m'_g, S_g[:, i]>; since Y_g = S_g + alpha m_g,
        # <m'_g, Y_g[:, i]> = <m'_g, S_g[:, i]> + alpha[g, i] <m'_g, m_g>
        affinity = torch.matmul(torch.stack([m, mixed], dim=2), nodes)  # B, G, 2, N
        alpha = torch.sigmoid(self.gate_norm(affinity[:, :, 0].reshape(B, G, H, W))).view(B, G, 1, N)
        second = affinity[:, :, 1:] + alpha * (mixed * m).sum(-1, keepdim=True).unsqueeze(-1)
        alpha2 = torch.sigmoid(self.interact_norm(second.reshape(B, G, H, W))).view(B, G, 1, N)
        # Z_g = Y_g + alpha' m'_g = S_g + alpha m_g + alpha' m'_g
        z = torch.addcmul(nodes, m.unsqueeze(-1), alpha)
        return torch.addcmul(z, mixed.unsqueeze(-1), alpha2).view(B, C, H, W)
