"""The StRA operator: a local operator followed by mode attention (SPEC 1 and 2).

``StRAttention`` replaces the 3x3 convolution of a bottleneck block. Its two
knobs reproduce the paper's ablations (Tables 1 and 2):

* ``local_op``: ``'local'`` (StRA local attention), ``'conv'`` (3x3 conv, the
  ResNet block), ``'group_conv'`` (3x3 conv with G groups) or ``'sasa'``
  (stand-alone self-attention).
* ``mode``: ``'full'``, ``'no_interaction'`` or ``'none'``.

``reference=True`` builds the step-by-step reference implementations of StRA's
own operators instead (unfold-based local attention, mode attention computed in
the paper's order): same parameters and state dict, slower; the test oracle and
the benchmark's stand-in for the authors' release.

Memory. In training, StRA keeps for backward little more than its input, the local
attention weights, the masks and the modal vectors, as the 3x3 convolution it replaces
keeps its input: the logit and mask branches recompute their hidden maps in backward
(``score_replay.py``), the mode gates keep only their few small maps (``mode_gating.py``),
and the local output that all of mode attention reads is recomputed there by one product
(``recompute_saved.py``). ``recompute=False`` keeps them instead: a little faster, and about
8 MiB more per block and 16 images at ReID shapes.
"""
from typing import Final

import torch
from torch import nn

from .checks import check_choice, check_divisible, check_feature_map, check_int
from .local_attn import LocalAttention
from .local_attn_ref import LocalAttentionReference
from .mode_attn import ModeAttention
from .mode_attn_ref import ModeAttentionReference
from .recompute_saved import outer_hooks_active, recompute_saved
from .replay import has_hooks
from .sasa import SelfAttention2d
from .stra_triton import HAS_TRITON, INTERPRETING, kernels_apply, stra_inference
from .tracing import eager_autograd, plain_tensor, running_eagerly

# fx leaves for plain torch.fx too, not only timm's tracer (register_notrace_function): layers/tracing.py
torch.fx.wrap('check_feature_map')

LOCAL_OPS = ('local', 'conv', 'group_conv', 'sasa')
MODES = ('full', 'no_interaction', 'none')
SASA_KERNEL = 7  # the SASA ablation's window (SPEC 2)


def create_local_op(
        local_op: str,
        dim: int,
        stride: int = 1,
        groups: int = 8,
        kernel_size: int = 3,
        reduction: int = 4,
        reference: bool = False,
        per_mode: bool = False,
        recompute: bool = True,
        device=None,
        dtype=None,
) -> nn.Module:
    """Build the local operator of a StRA block: (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride)).

    ``kernel_size`` is the window of ``local`` and the kernel of ``conv``/``group_conv``;
    SASA always uses the paper's 8 heads and 7x7 window. ``reference`` picks the unfold-based
    ``LocalAttentionReference`` for ``local``; ``per_mode`` has ``local`` return its output laid
    out channels last within each mode and ``recompute`` has it recompute its logit branch in
    backward (``LocalAttention``).
    """
    dd = {'device': device, 'dtype': dtype}
    check_choice(local_op, LOCAL_OPS, 'local_op')
    if local_op == 'local':
        local_cls = LocalAttentionReference if reference else LocalAttention
        return local_cls(dim, groups, kernel_size, stride, reduction, per_mode=per_mode, recompute=recompute, **dd)
    if local_op == 'sasa':
        if kernel_size not in (3, SASA_KERNEL):  # (3: the default, which the other operators take)
            raise ValueError(f"local_op='sasa' uses the paper's {SASA_KERNEL}x{SASA_KERNEL} window and 8 heads; "
                             f'kernel_size={kernel_size} sets the window of local, conv and group_conv only.')
        return SelfAttention2d(dim, heads=8, kernel_size=SASA_KERNEL, stride=stride, qkv_groups=groups, **dd)
    if kernel_size < 1 or kernel_size % 2 == 0:  # padded by kernel_size // 2, an even kernel would grow the map
        raise ValueError(f"local_op={local_op!r}: kernel_size must be odd and >= 1, got {kernel_size}.")
    conv_groups = groups if local_op == 'group_conv' else 1
    return nn.Conv2d(
        dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=conv_groups, bias=False, **dd)


class StRAttention(nn.Module):
    """Structure-Regularized Attention: ``mode(local(x))``.

    Args:
        dim: channels C, divisible by ``groups``.
        stride: 1, or 2 to downsample like a strided 3x3 conv with padding 1.
        groups: number of modes G (default 8).
        kernel_size: local window k (default 3).
        reduction: reduction r of the local logit branch (default 4).
        local_op: one of ``LOCAL_OPS``.
        mode: one of ``MODES``.
        reference: build the step-by-step reference implementations (slow; tests and benchmarks).
        recompute: recompute in backward what StRA's own operators would otherwise keep (see the
            module docstring); no effect with ``reference``. Same values and gradients.

    ``use_triton`` (an attribute, off by default; ``set_triton`` sets it on a whole model) runs the
    operator's inference as three Triton kernels (``stra_triton.py``) where they apply: StRA's own local
    and mode attention, on CUDA, in float32 or a half type (the weights' dtype, or autocast's), in eval
    mode (plain ``nn.BatchNorm2d`` norms with running statistics), when nothing needs a gradient, eagerly
    (not under TorchScript, jit tracing, fx or ``torch.compile``) on a plain tensor (no subclass, dispatch
    mode, functorch transform or forward-mode AD), without forward hooks on its modules; elsewhere the
    PyTorch path runs. Same values up to rounding.

    Shapes:
        (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))
    """
    per_mode: Final[bool]
    recompute: Final[bool]
    use_triton: bool

    def __init__(
            self,
            dim: int,
            stride: int = 1,
            groups: int = 8,
            kernel_size: int = 3,
            reduction: int = 4,
            local_op: str = 'local',
            mode: str = 'full',
            reference: bool = False,
            recompute: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_choice(local_op, LOCAL_OPS, 'local_op')
        check_choice(mode, MODES, 'mode')
        dim, stride, groups, kernel_size, reduction = (check_int(v, name, 'StRAttention') for v, name in (
            (dim, 'dim'), (stride, 'stride'), (groups, 'groups'), (kernel_size, 'kernel_size'),
            (reduction, 'reduction')))
        check_divisible(dim, groups, 'StRAttention')
        if stride not in (1, 2):
            raise ValueError(f'StRAttention: stride must be 1 or 2 (as the 3x3 convolution it replaces), got {stride}.')
        self.dim = dim
        self.local_op = local_op
        self.mode_type = mode
        # the fast local attention hands its per-mode channels-last output to the fast mode attention as it is
        self.per_mode = local_op == 'local' and mode != 'none' and not reference
        self.recompute = recompute and not reference
        self.use_triton = False
        self.local = create_local_op(
            local_op, dim, stride, groups, kernel_size, reduction, reference,
            per_mode=self.per_mode, recompute=self.recompute, **dd)
        if mode == 'none':
            self.mode = nn.Identity()
        else:
            mode_cls = ModeAttentionReference if reference else ModeAttention
            self.mode = mode_cls(
                dim, groups, interaction=mode == 'full', per_mode=self.per_mode, recompute=self.recompute, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.dim, 'StRAttention')
        if self.use_triton and self.per_mode and not torch.jit.is_scripting() and self._infers_with_triton(x):
            return self._forward_triton(x)
        if self.per_mode and self.recompute and not torch.jit.is_scripting() and self._recomputes_local(x):
            return self._forward_recomputing_local(x)
        return self.mode(self.local(x))

    @torch.jit.unused
    def _infers_with_triton(self, x: torch.Tensor) -> bool:
        """Whether ``use_triton``'s kernels apply (see the class docstring)."""
        # first: under fx the input is a proxy, whose attributes cannot decide
        if not (running_eagerly() and HAS_TRITON and plain_tensor(x) and x.numel()
                and (x.is_cuda or (INTERPRETING and x.device.type == 'cpu'))
                and x.dtype in (torch.float32, torch.float16, torch.bfloat16)):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        # outside autocast, a dtype the weights do not have is the PyTorch path's error to raise
        if not torch.is_autocast_enabled(x.device.type) and self.local.value.weight.dtype != x.dtype:
            return False
        # eval mode, and no forward hooks the kernels would skip (the operator's own still run)
        modules = [*self.local.modules(), *self.mode.modules()]
        if self.training or any(m.training for m in modules) or has_hooks(*modules):
            return False
        return kernels_apply(x, self.local, self.mode, self._compute_dtype(x))

    @torch.jit.unused
    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype the PyTorch path computes in: autocast's where it is on, else the input's."""
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return x.dtype

    @torch.jit.unused
    def _forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        return stra_inference(x, self.local, self.mode, self._compute_dtype(x))

    @torch.jit.unused
    def _recomputes_local(self, x: torch.Tensor) -> bool:
        # under other saved-tensor hooks (checkpointing, offloading) ours would override them: leave it to them;
        # forward hooks on the local operator or its layers run on its plain path (forward_recomputable skips them)
        return eager_autograd(x) and not outer_hooks_active() and not has_hooks(*self.local.modules())

    @torch.jit.unused
    def _forward_recomputing_local(self, x: torch.Tensor) -> torch.Tensor:
        """``forward``, with what mode attention keeps of the local output recomputed in backward.

        ``local`` is run through ``forward_recomputable``, not called: its forward hooks do not fire here.
        """
        local, recompute = self.local.forward_recomputable(x)
        with recompute_saved(local, recompute):
            return self.mode(local)


def set_triton(model: nn.Module, enabled: bool = True) -> int:
    """Set ``use_triton`` on every ``StRAttention`` of ``model``: their inference on CUDA as Triton kernels
    where they apply (see ``StRAttention``). Returns how many operators there are."""
    ops = [m for m in model.modules() if isinstance(m, StRAttention)]
    for op in ops:
        op.use_triton = enabled
    return len(ops)
