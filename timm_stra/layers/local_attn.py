"""Local attention, the first half of StRA (Eq. 2 of the paper, SPEC 1.1).

Each of G modes weights the k x k neighbourhood of every query position with a
softmax over ``omega[g, i, j] + nu[g, j]``: a query score for the (position,
offset) pair plus a score of the neighbour itself. Outside the map ``nu`` and the
values are zero (border neighbours still take part in the softmax), as in the
authors' release.

This implementation lays the values out channels last within each mode and sums
the neighbours of a whole row of queries with one matrix product (``local_attend.py``),
so it never materialises the k*k copies of the values that the unfold-based
reference (``local_attn_ref.py``) builds.
"""
from typing import Callable, Final, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_divisible, check_feature_map
from .local_attend import ValueRows, local_attend, local_attend_recompute, local_attend_sharing_rows, local_sum
from .recompute_saved import will_run
from .replay import has_hooks
from .score_branch import ScoreBranch

# fx leaves for plain torch.fx too, not only timm's tracer (register_notrace_function): layers/tracing.py
torch.fx.wrap('check_feature_map')
torch.fx.wrap('local_attend')


def score_hidden_chs(channels: int, reduction: int, groups: int) -> int:
    """Width of the logit branch: ``channels // reduction`` rounded down to a multiple of ``groups`` (>= groups).

    For the paper's operator (C=512, r=4, G=8) this is exactly C / r = 128.
    """
    return max(groups, (channels // reduction) // groups * groups)


def neighbours_by_slices(padded: torch.Tensor, kernel_size: int, stride: int, out_h: int, out_w: int) -> torch.Tensor:
    """The k x k neighbours of every query position, as k*k strided slices of the padded map.

    What ``unfold`` views, for ONNX's TorchScript exporter (``torch.onnx.export(dynamo=False)``, timm's
    ``onnx_export.py`` by default), which cannot unfold a map whose sizes it does not know.

    Shapes:
        (B, G, H + k - 1, W + k - 1) -> (B, G, k, k, out_h, out_w); entry [.., dy, dx, i, j] is the map at
        (i * stride + dy, j * stride + dx) of the padded map.
    """
    B, G = padded.shape[0], padded.shape[1]
    k, s = kernel_size, stride
    slices = [padded[:, :, dy:dy + (out_h - 1) * s + 1:s, dx:dx + (out_w - 1) * s + 1:s]
              for dy in range(k) for dx in range(k)]
    return torch.stack(slices, dim=2).reshape(B, G, k, k, out_h, out_w)


class LocalAttention(nn.Module):
    """StRA local attention.

    Args:
        dim: channels C (input and output), divisible by ``groups``.
        groups: number of modes G.
        kernel_size: neighbourhood size k (odd).
        stride: 1, or 2 to downsample (queries at every other position; SPEC 1.1 step 4).
        reduction: reduction r of the logit branch width.
        per_mode: return the output laid out channels last within each mode, as
            ``ModeAttention(per_mode=True)`` takes it (no layout copy between the two).
        recompute: the logit branch recomputes its hidden maps in backward (``ScoreBranch``).

    Subclasses set ``fast_convs = False`` to keep the logit branch's grouped 1x1 convolutions
    plain ``nn.Conv2d`` layers (see ``ScoreBranch``). (StRA's inference as Triton kernels, local
    attention included, is ``StRAttention.use_triton``.)

    Shapes:
        (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride)); ``per_mode``:
        (B, C, H, W) -> (B, G, ceil(H / stride), ceil(W / stride), C / G) (see ``local_attend``)
    """
    fast_convs = True
    per_mode: Final[bool]

    def __init__(
            self,
            dim: int,
            groups: int = 8,
            kernel_size: int = 3,
            stride: int = 1,
            reduction: int = 4,
            per_mode: bool = False,
            recompute: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_divisible(dim, groups, 'LocalAttention')
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'LocalAttention: kernel_size must be odd and >= 1, got {kernel_size}.')
        if reduction < 1:
            raise ValueError(f'LocalAttention: reduction must be >= 1 (the logit branch is dim // reduction wide), '
                             f'got {reduction}.')
        if stride not in (1, 2):
            raise ValueError(f'LocalAttention: stride must be 1 or 2, got {stride}.')
        self.dim = dim
        self.groups = groups
        self.kernel_size = kernel_size
        self.stride = stride
        self.per_mode = per_mode
        kk = kernel_size * kernel_size
        # output channels: G neighbour scores nu, then G * k*k query scores omega (official layout)
        self.score = ScoreBranch(
            dim, score_hidden_chs(dim, reduction, groups), groups * (1 + kk), groups,
            fast=self.fast_convs, recompute=recompute, **dd)
        self.value = nn.Conv2d(dim, dim, 1, groups=groups, bias=False, **dd)

    def attention(self, scores: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        """Neighbourhood weights from the logit branch output.

        Args:
            scores: (B, G * (1 + k*k), H, W) output of ``self.score``.

        Returns:
            (B, G, k*k, out_h, out_w) softmax weights (float32 statistics, input dtype).
        """
        B, _, H, W = scores.shape
        G, k, s, p = self.groups, self.kernel_size, self.stride, self.kernel_size // 2
        nu, omega = torch.split(scores, [G, G * k * k], dim=1)
        nu = F.pad(nu, (p, p, p, p))
        if not torch.jit.is_scripting() and self._exporting_onnx():
            nu = neighbours_by_slices(nu, k, s, out_h, out_w)
        else:
            # (B, G, out_h, out_w, k, k) view: entry [.., i, j, dy, dx] is nu at the neighbour (dy - p, dx - p) of
            # query (i, j); unfolding the padded map reads them all in one view (one gradient kernel per unfold in
            # backward)
            nu = nu.unfold(2, k, s).unfold(3, k, s).permute(0, 1, 4, 5, 2, 3)
        omega = omega.reshape(B, G, k, k, H, W)[..., ::s, ::s]
        logits = (omega + nu).reshape(B, G, k * k, out_h, out_w)
        return torch.softmax(logits, dim=2, dtype=torch.promote_types(scores.dtype, torch.float32)).to(scores.dtype)

    def neighbour_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) input -> (B, G, k*k, ceil(H / stride), ceil(W / stride)) weights (``attention`` of the
        logit branch's output)."""
        check_feature_map(x, self.dim, 'LocalAttention')
        H, W = x.shape[2], x.shape[3]
        return self.attention(self.score(x), (H - 1) // self.stride + 1, (W - 1) // self.stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.neighbour_weights(x)
        if not torch.jit.is_scripting() and self._value_hooked():
            out = self._attend_through_value(attn, x)
        else:
            out = local_attend(attn, x, self.value.weight, self.groups, self.kernel_size, self.stride)  # B, G, h, w, n
        if self.per_mode:
            return out
        B, G, h, w, n = out.shape
        return out.permute(0, 1, 4, 2, 3).reshape(B, G * n, h, w)

    @torch.jit.unused
    def _exporting_onnx(self) -> bool:
        """Whether ``torch.onnx.export`` is tracing the model (``attention`` then gathers neighbours by slices)."""
        return torch.onnx.is_in_onnx_export()

    @torch.jit.unused
    def _value_hooked(self) -> bool:
        """Whether the value projection has forward hooks or pre-hooks (pruning, weight or spectral norm of the old
        kind recompute its weight in one): ``local_attend`` reads the weight without calling the module."""
        return has_hooks(self.value)

    @torch.jit.unused
    def _attend_through_value(self, attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``local_attend`` with the values projected by calling ``self.value`` (its hooks run): plain ops."""
        value = self.value(x)
        B, _, H, W = value.shape
        value = value.view(B, self.groups, -1, H, W).permute(0, 1, 3, 4, 2)  # B, G, H, W, n
        return local_sum(attn, value, self.kernel_size, self.stride)

    @torch.jit.unused
    def forward_recomputable(self, x: torch.Tensor) -> Tuple[torch.Tensor, Callable[[], torch.Tensor]]:
        """``forward`` with ``per_mode``, and a function that computes the same output again without autograd.

        The recomputation reads the input, the attention weights and the value weight (which the
        output's autograd node keeps anyway when it has one), so it keeps nothing from forward to
        backward, and refuses to run if any of them was modified in place since. It projects the
        values and takes one product; when the output's own backward is to run in the same pass, it
        leaves it those projected values, which that backward would otherwise compute again
        (``ValueRows``), and which live until then. The output itself is not made compact
        (whatever keeps it keeps a handle, see ``recompute_saved``).

        Returns:
            (B, G, ceil(H / stride), ceil(W / stride), C / G) output and its recomputation.
        """
        attn = self.neighbour_weights(x)
        geometry = (self.groups, self.kernel_size, self.stride)
        weight = self.value.weight
        rows = ValueRows()
        out = local_attend_sharing_rows(attn, x, weight, *geometry, rows)
        inputs = (attn.detach(), x.detach(), weight.detach())
        versions = [t._version for t in inputs]
        node = out.grad_fn  # upstream of whatever keeps ``recompute``: no reference cycle

        def recompute() -> torch.Tensor:
            if [t._version for t in inputs] != versions:
                raise RuntimeError(
                    'LocalAttention: its input, attention weights or value weight were modified in place between '
                    'forward and backward, so its output cannot be recomputed; do not modify them in place, or '
                    'build the model with recompute=False.')
            return local_attend_recompute(*inputs, *geometry, rows if will_run(node) else None)

        return out, recompute
