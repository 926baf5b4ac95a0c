"""The StRA operator's inference as three Triton kernels (CUDA, eval mode, no gradients).

In inference the norms are fixed affine maps, so the only reductions across positions are the
local softmax (over a query's k x k neighbours) and the spatial masks' softmax and pooling (over
a mode's positions): three kernels cover the whole operator, where the PyTorch path launches
about a hundred small ops, each waiting for Python on a GPU. Per (sample, mode) and block of
positions:

1. ``_score_value_kernel``: the local logit branch (grouped 1x1 conv, norm, tanh, grouped 1x1 conv,
   norm) and the value projection, from the input: scores (B, G * (1 + k*k), H*W) and values
   (B, G, H*W, n), channels last per mode.
2. ``_attend_kernel``: each query's softmax over its k x k neighbour logits ``omega + nu`` (``nu`` and
   the values zero outside the map, as in ``LocalAttention``), the weighted sum of the values (one
   online-softmax pass) into the local output S (B, G, h*w, n), then the mask branch of the same
   mode on S and the block's partial sums of the pooling (float32).
3. ``_gate_kernel``: the modal vectors ``m = M S`` (the masks' softmax over the positions and the
   pooling, combined from the partial sums of kernel 2; each program combines its sample's G modes
   itself instead of a fourth launch), the mode interaction
   ``m' = softmax(sqrt(G) * l2normalize_rows(m m^T)) m``, the gates ``alpha = sigmoid(BN(<m, S>))`` and
   ``alpha' = sigmoid(BN(<m', S> + alpha <m', m>))``, and ``Z = S + alpha m + alpha' m'``, written channels
   first (B, C, h, w).

The products take their operands in the compute dtype (the input's, autocast's under autocast) and
accumulate in float32, as the PyTorch path's kernels do: half types on tensor cores, float32 in
TF32 where PyTorch allows its convolutions (``torch.backends.cudnn.allow_tf32``, on by default) or
products (``torch.backends.cuda.matmul.allow_tf32``) TF32. Everything else is computed in float32;
what is stored between kernels (scores, values, S) is rounded to the compute dtype, as the PyTorch
path keeps it. Same values as ``StRAttention``'s PyTorch path up to rounding (another order of
summation; in half types, float32 where that path rounds in between).
``TRITON_INTERPRET=1`` runs the kernels on CPU tensors (the tests do). The kernels themselves are in
``stra_triton_kernels.py``; here is when they apply (``kernels_apply``) and how they are launched.
"""

import contextlib
import math

import torch
from torch import nn

from .mode_gating import NORMALIZE_EPS
from .stra_triton_kernels import HAS_TRITON, INTERPRETING, triton  # noqa: F401  (INTERPRETING: for stra_attn)

if HAS_TRITON:
    from .stra_triton_kernels import _attend_kernel, _gate_kernel, _score_value_kernel

BLOCK_POSITIONS = 32  # positions per program (the products' M dimension: at least 16)
PART_CHUNK = 16  # partial sums of the pooling combined at once
GATE_PROGRAMS = 4  # gate programs per (sample, mode), at most: each combines the partial sums once
_MAX_GRID_Y = 65535  # CUDA's limit on a grid's second dimension
_MAX_OFFSET = 2 ** 31 - 1  # the kernels' offsets within a sample are int32


def _block(size: int) -> int:
    """A block dimension of ``size`` for a product: a power of 2, at least 16."""
    return max(16, 1 << (size - 1).bit_length())


def _attr(module: nn.Module, name: str):
    """``getattr(module, name)`` for a parameter, buffer or submodule, looked up in the module's dicts first.

    ``nn.Module.__getattr__`` is a Python call per attribute (about 1 us on a 2-core VM, some 50 per inference
    of an operator), which is what the dicts save. Whatever is not in them (DataParallel replicas keep their
    parameters as plain attributes, a parametrised weight is a property) goes through ``getattr``.
    """
    for store in (module._parameters, module._buffers, module._modules):
        if name in store:
            return store[name]
    return getattr(module, name)


def _branch_modules(local, mode):
    """The logit branch's and the mask branch's (conv1, bn1, conv2, bn2)."""
    return [tuple(_attr(branch, name) for name in ('conv1', 'bn1', 'conv2', 'bn2'))
            for branch in (_attr(local, 'score'), _attr(mode, 'mask'))]


def _gate_norms(mode) -> list:
    gate = _attr(mode, 'gate_norm')
    return [gate, _attr(mode, 'interact_norm')] if mode.interaction else [gate]


def kernels_apply(x: torch.Tensor, local, mode, dtype: torch.dtype) -> bool:
    """Whether the kernels compute ``mode(local(x))`` in ``dtype`` for these modules (the caller checks the mode,
    device, input dtype and gradients): every norm a plain ``nn.BatchNorm2d`` with running statistics (the
    kernels apply them as eval mode does), every score-branch convolution with a bias, a map within the grid's
    and the offsets' limits, and for bfloat16 on CUDA a GPU whose tensor cores take it (Ampere or later)."""
    if dtype == torch.bfloat16 and x.is_cuda and torch.cuda.get_device_capability(x.device)[0] < 8:
        return False
    modules = [m for branch in _branch_modules(local, mode) for m in branch] + _gate_norms(mode)
    for m in modules:
        if isinstance(m, nn.Conv2d):
            if _attr(m, 'bias') is None:
                return False
        elif type(m) is not nn.BatchNorm2d or _attr(m, 'running_mean') is None:
            return False
    B, C, H, W = x.shape
    return -(-H * W // BLOCK_POSITIONS) <= _MAX_GRID_Y and C * H * W <= _MAX_OFFSET


def _norm_args(norm):
    """Pointers and eps of an eval-mode ``nn.BatchNorm2d`` for ``_norm``, and whether it is affine (without, the
    running mean stands in for the weight and bias pointers, which are not read)."""
    weight, bias, mean, var = (_attr(norm, name) for name in ('weight', 'bias', 'running_mean', 'running_var'))
    affine = weight is not None
    return (mean, var, weight if affine else mean, bias if affine else mean, norm.eps), affine


def _conv_args(conv):
    """Weight and bias of a score branch's 1x1 convolution."""
    return _attr(conv, 'weight'), _attr(conv, 'bias')


def _fp32_precision(new_api: list, legacy) -> str:
    """'tf32' or 'ieee': how PyTorch takes a float32 product on CUDA. ``legacy()`` reads the ``allow_tf32`` flag;
    once ``fp32_precision`` (torch 2.9 and later) has been set that read raises, and the first of ``new_api``
    (objects with ``fp32_precision``, innermost first) that is not 'none' decides."""
    try:
        return 'tf32' if legacy() else 'ieee'
    except RuntimeError:
        for obj in new_api:
            precision = getattr(obj, 'fp32_precision', 'none')
            if precision != 'none':
                return 'tf32' if precision == 'tf32' else 'ieee'
        return 'ieee'


def _precisions(x: torch.Tensor, dtype: torch.dtype):
    """The float32 products' precision: of the convolutions (cuDNN's, for the logit branch and the values) and of
    the batched products (cuBLAS's, the mask branch), as PyTorch takes them; IEEE off NVIDIA Ampere or later."""
    if not (x.is_cuda and dtype == torch.float32 and torch.version.hip is None
            and torch.cuda.get_device_capability(x.device)[0] >= 8):
        return 'ieee', 'ieee'
    backends = torch.backends
    conv = _fp32_precision([getattr(backends.cudnn, 'conv', None), backends.cudnn, backends],
                           lambda: backends.cudnn.allow_tf32)
    matmul = _fp32_precision([backends.cuda.matmul, backends], lambda: backends.cuda.matmul.allow_tf32)
    return conv, matmul


def _position_stride(x: torch.Tensor):
    """The stride between positions ``y * W + x`` of (B, C, H, W) ``x`` where it is one (NCHW and channels last;
    size-1 dims may have any stride) and a sample's offsets fit the kernels' int32, else ``None``."""
    B, C, H, W = x.shape
    if W == 1:
        stride = x.stride(2)
    elif H == 1 or x.stride(2) == W * x.stride(3):
        stride = x.stride(3)
    else:
        return None
    fits = (C - 1) * abs(x.stride(1)) + (H * W - 1) * abs(stride) <= _MAX_OFFSET
    return stride if fits and stride >= 0 and x.stride(1) >= 0 else None


def _on_device(x: torch.Tensor):
    """Triton launches on the current CUDA device, not the tensors': make ``x``'s current where it is not."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def stra_inference(x: torch.Tensor, local, mode, dtype: torch.dtype) -> torch.Tensor:
    """StRA's operator in inference: ``mode(local(x))`` of eval-mode ``LocalAttention`` and ``ModeAttention``
    modules (per-mode layout between them), by the three kernels; ``kernels_apply`` must hold.

    Args:
        x: (B, C, H, W) on CUDA (or the CPU under ``TRITON_INTERPRET=1``); read in place where its positions are
            one stride apart (NCHW, channels last), else copied to NCHW first.
        local, mode: the operator's halves; their norms in eval mode with running statistics.
        dtype: the compute dtype (the input's, or autocast's): of the products' operands, the intermediate
            maps and the output.

    Returns:
        (B, C, ceil(H / s), ceil(W / s)) in ``dtype``, contiguous.
    """
    if not HAS_TRITON:
        raise RuntimeError('stra_inference needs triton 3 or later (pip install triton); or use the PyTorch path.')
    position_stride = _position_stride(x)
    if position_stride is None:
        x = x.contiguous()
        position_stride = _position_stride(x)
    B, C, H, W = x.shape
    G, k, s = local.groups, local.kernel_size, local.stride
    h, w = (H - 1) // s + 1, (W - 1) // s + 1
    (score1, bn1, score2, bn2), (mask1, mask_bn1, mask2, mask_bn2) = _branch_modules(local, mode)
    value_weight = _attr(_attr(local, 'value'), 'weight')
    n = value_weight.shape[0] // G
    hid, score_chs, mask_hid = score1.out_channels // G, score2.out_channels // G, mask1.out_channels // G
    scores = x.new_empty(B, G * score_chs, H * W, dtype=dtype)
    values = x.new_empty(B, G, H * W, n, dtype=dtype)
    nodes = x.new_empty(B, G, h * w, n, dtype=dtype)
    blocks = triton.cdiv(H * W, BLOCK_POSITIONS), triton.cdiv(h * w, BLOCK_POSITIONS)
    parts = x.new_empty(B, G, blocks[1], n + 2, dtype=torch.float32)  # the pooling's partial sums, per block
    result = x.new_empty(B, G * n, h, w, dtype=dtype)
    (norm1, affine1), (norm2, affine2), (mask_norm1, mask_affine1), (mask_norm2, mask_affine2) = (
        _norm_args(norm) for norm in (bn1, bn2, mask_bn1, mask_bn2))
    gate_norms = [_norm_args(norm) for norm in _gate_norms(mode)]  # without interaction, the gate norm's twice:
    (gate, gate_affine), (interact, interact_affine) = gate_norms[0], gate_norms[-1]  # the kernel reads one
    conv_precision, matmul_precision = _precisions(x, dtype)
    with _on_device(x):
        _score_value_kernel[(B * G, blocks[0])](
            x, x.stride(0), x.stride(1), position_stride, *_conv_args(score1), *norm1,
            *_conv_args(score2), *norm2, value_weight, scores, values,
            H * W, G, C // G, hid, score_chs, n, affine1, affine2, conv_precision,
            BLOCK_P=BLOCK_POSITIONS, CG_P=_block(C // G), HID_P=_block(hid), OUT_P=_block(score_chs), N_P=_block(n))
        _attend_kernel[(B * G, blocks[1])](
            scores, values, nodes, parts, *_conv_args(mask1), *mask_norm1, *_conv_args(mask2), *mask_norm2,
            H, W, h, w, G, n, mask_hid, k, s, mask_affine1, mask_affine2, matmul_precision,
            BLOCK_Q=BLOCK_POSITIONS, N_P=_block(n), MH_P=_block(mask_hid))
        _gate_kernel[(B * G, min(blocks[1], GATE_PROGRAMS))](
            nodes, parts, result, *gate, *interact, h * w, blocks[1], NORMALIZE_EPS, math.sqrt(G), G, n,
            mode.interaction, gate_affine, interact_affine,
            BLOCK_P=BLOCK_POSITIONS, G_P=triton.next_power_of_2(G), N_P=_block(n), PART_P=PART_CHUNK)
    return result
