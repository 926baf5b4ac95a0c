"""Stand-alone self-attention (SASA; Ramachandran et al., NeurIPS 2019), the paper's ablation baseline.

As configured for Table 2 of the StRA paper (SPEC 2): 8 heads over a 7x7 window,
queries, keys and values from 1x1 convolutions with G groups and no bias, relative
row and column position embeddings (half of the channels each) added to the keys,
logits ``q . (k + r)`` without scaling, as in the SASA paper, and out-of-map
positions masked out of the softmax.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_divisible, check_feature_map

# fx leaves for plain torch.fx too, not only timm's tracer (register_notrace_function)
torch.fx.wrap('check_feature_map')


class SelfAttention2d(nn.Module):
    """SASA layer.

    Args:
        dim: channels C, divisible by ``heads`` and ``qkv_groups`` (and at least 2: half of the channels take
            the row embedding, half the column one).
        heads: attention heads.
        kernel_size: window size (odd, at least 1).
        stride: 1 or 2 (queries at every ``stride``-th position).
        qkv_groups: groups of the query, key and value 1x1 convolutions.

    Shapes:
        (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))
    """

    def __init__(
            self,
            dim: int,
            heads: int = 8,
            kernel_size: int = 7,
            stride: int = 1,
            qkv_groups: int = 8,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_divisible(dim, heads, 'SelfAttention2d', 'heads', 'heads')
        check_divisible(dim, qkv_groups, 'SelfAttention2d', 'query, key and value groups', 'qkv_groups')
        if dim < 2:
            raise ValueError(f'SelfAttention2d: dim must be at least 2 (row and column embeddings), got {dim}.')
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'SelfAttention2d: kernel_size must be odd and >= 1, got {kernel_size}.')
        if stride not in (1, 2):
            raise ValueError(f'SelfAttention2d: stride must be 1 or 2, got {stride}.')
        self.dim = dim
        self.heads = heads
        self.kernel_size = kernel_size
        self.stride = stride
        self.query = nn.Conv2d(dim, dim, 1, groups=qkv_groups, bias=False, **dd)
        self.key = nn.Conv2d(dim, dim, 1, groups=qkv_groups, bias=False, **dd)
        self.value = nn.Conv2d(dim, dim, 1, groups=qkv_groups, bias=False, **dd)
        self.rel_h = nn.Parameter(torch.empty(dim // 2, kernel_size, **dd))
        self.rel_w = nn.Parameter(torch.empty(dim - dim // 2, kernel_size, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.rel_h, std=self.rel_h.shape[0] ** -0.5)
        nn.init.normal_(self.rel_w, std=self.rel_w.shape[0] ** -0.5)

    def rel_pos(self) -> torch.Tensor:
        """(C, k*k) relative embedding of each window offset, row-major: rows then columns of channels."""
        k = self.kernel_size
        rows = self.rel_h.unsqueeze(2).expand(-1, k, k)
        cols = self.rel_w.unsqueeze(1).expand(-1, k, k)
        return torch.cat([rows, cols], dim=0).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim, 'SelfAttention2d')
        B, C, H, W = x.shape
        k, s, heads = self.kernel_size, self.stride, self.heads
        kk = k * k
        out_h, out_w = (H - 1) // s + 1, (W - 1) // s + 1
        L = out_h * out_w
        hd = C // heads
        q = self.query(x)[..., ::s, ::s].reshape(B, heads, hd, L)
        keys = F.unfold(self.key(x), k, padding=k // 2, stride=s).view(B, C, kk, L)
        keys = (keys + self.rel_pos().unsqueeze(-1)).view(B, heads, hd, kk, L)
        values = F.unfold(self.value(x), k, padding=k // 2, stride=s).view(B, heads, hd, kk, L)
        inside = F.unfold(torch.ones_like(x[:1, :1]), k, padding=k // 2, stride=s).view(1, 1, kk, L) > 0
        logits = torch.einsum('bhdl,bhdjl->bhjl', q, keys)              # B, heads, kk, L
        logits = logits.masked_fill(~inside, float('-inf'))
        attn = torch.softmax(logits, dim=2, dtype=torch.promote_types(values.dtype, torch.float32)).to(values.dtype)
        out = torch.einsum('bhjl,bhdjl->bhdl', attn, values)
        return out.reshape(B, C, out_h, out_w)
