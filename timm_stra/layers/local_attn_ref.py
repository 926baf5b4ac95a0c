"""Unfold-based reference of StRA local attention: the test oracle and benchmark anchor.

It follows the authors' release step for step (grouped 1x1 convolutions as
``nn.Conv2d`` layers; unfold the neighbour scores and the values into k*k copies,
add, softmax, multiply, sum), generalised to stride 2 as SPEC 1.1 step 4 defines
it. Plain and slow on purpose: ``LocalAttention`` must agree with it.
"""
import torch
import torch.nn.functional as F

from .local_attn import LocalAttention


def local_attention_reference(
        scores: torch.Tensor,
        value: torch.Tensor,
        groups: int,
        kernel_size: int,
        stride: int,
) -> torch.Tensor:
    """Local attention from the logit branch output and the values, by unfolding.

    Args:
        scores: (B, G * (1 + k*k), H, W); channels [0, G) are nu, the rest omega viewed (G, k*k).
        value: (B, C, H, W).

    Returns:
        (B, C, ceil(H / stride), ceil(W / stride)).
    """
    B, C, H, W = value.shape
    G, k, s = groups, kernel_size, stride
    kk = k * k
    out_h, out_w = (H - 1) // s + 1, (W - 1) // s + 1
    nu = F.unfold(scores[:, :G], k, padding=k // 2, stride=s).view(B, G, kk, out_h, out_w)
    omega = scores[:, G:].reshape(B, G, kk, H, W)[..., ::s, ::s]
    attn = torch.softmax(omega + nu, dim=2)  # B, G, k*k, h, w
    v = F.unfold(value, k, padding=k // 2, stride=s).view(B, G, C // G, kk, out_h, out_w)
    return (attn.unsqueeze(2) * v).sum(dim=3).reshape(B, C, out_h, out_w)


class LocalAttentionReference(LocalAttention):
    """``LocalAttention`` with the unfold-based computation and plain grouped convolutions; same
    parameters, same state dict.

    Shapes:
        (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))
    """
    fast_convs = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = local_attention_reference(self.score(x), self.value(x), self.groups, self.kernel_size, self.stride)
        if self.per_mode:  # B, G, h, w, C / G, as LocalAttention lays it out
            B, C, h, w = out.shape
            return out.view(B, self.groups, C // self.groups, h, w).permute(0, 1, 3, 4, 2)
        return out
