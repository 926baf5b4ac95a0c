"""Step-by-step reference of StRA mode attention: the test oracle and benchmark anchor.

It computes SPEC 1.2 in the order the paper writes it, like the authors' release:
the node-to-mode gates ``alpha`` and ``alpha'`` are expanded to all C channels
(each mode's gate repeated over its C/G channels), ``Y`` is materialised, and the
interaction gate reads ``Y`` in a second pass; the mask branch's grouped 1x1
convolutions are plain ``nn.Conv2d`` layers. Plain and slow on purpose:
``ModeAttention`` (one pass over S for both gates) must agree with it.
"""
import math

import torch
import torch.nn.functional as F

from .mode_attn import ModeAttention, _normalize_masks


def _expand_gate(gate: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, G, H, W) per-mode gate -> (B, C, H, W), each mode's gate repeated over its C/G channels."""
    B, G, H, W = gate.shape
    return gate.unsqueeze(2).repeat(1, 1, channels // G, 1, 1).reshape(B, channels, H, W)


class ModeAttentionReference(ModeAttention):
    """``ModeAttention`` computed step by step; same parameters, same state dict, same diversity term.

    Shapes:
        (B, C, H, W) -> (B, C, H, W)
    """
    fast_convs = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_mode:  # B, G, H, W, C / G -> B, C, H, W
            B, G, H, W, n = x.shape
            x = x.permute(0, 1, 4, 2, 3).reshape(B, G * n, H, W)
        B, C, H, W = x.shape
        G = self.groups
        masks = self.diversity(_normalize_masks(self.mask(x), x.dtype))  # M: B, G, H, W
        weighted = x * _expand_gate(masks, C)                           # M[g, i] * S_g[:, i]
        m = weighted.sum(dim=(2, 3)).view(B, G, C // G)                 # modal vectors: B, G, n
        m_map = m.reshape(B, C, 1, 1)

        # mode vector unit: e[g, i] = <m_g, S_g[:, i]>, alpha = sigmoid(BN(e)), Y_g = S_g + alpha m_g
        e = (x * m_map).view(B, G, C // G, H, W).sum(dim=2)
        alpha = torch.sigmoid(self.gate_norm(e))
        y = x + _expand_gate(alpha, C) * m_map
        if not self.interaction:
            return y

        # mode interaction unit: P = softmax(sqrt(G) * l2normalize_rows(m m^T)), m' = P m
        paths = F.normalize(torch.bmm(m, m.transpose(1, 2)), dim=2)
        mixed = torch.bmm(torch.softmax(paths * math.sqrt(G), dim=2), m)  # m': B, G, n
        mixed_map = mixed.reshape(B, C, 1, 1)
        # e'[g, i] = <m'_g, Y_g[:, i]>, alpha' = sigmoid(BN(e')), Z_g = Y_g + alpha' m'_g
        e2 = (y * mixed_map).view(B, G, C // G, H, W).sum(dim=2)
        alpha2 = torch.sigmoid(self.interact_norm(e2))
        return y + _expand_gate(alpha2, C) * mixed_map
