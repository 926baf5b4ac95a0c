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
   mode on S: mask logits (B, G, h*w), float32.
3. ``_gate_kernel``: the modal vectors ``m = M S`` (the masks' softmax over the positions and the
   pooling in one online pass; every program pools its sample's G modes itself, which reads S G
   times over, from cache, instead of a fourth launch), the mode interaction
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
``TRITON_INTERPRET=1`` runs the kernels on CPU tensors (the tests do).
"""
import contextlib
import math
import os

import torch

from .mode_gating import NORMALIZE_EPS

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch on Linux; elsewhere the PyTorch path serves
    triton = None

HAS_TRITON = triton is not None
# Triton reads the variable when the kernels are defined: it runs them on CPU tensors from then on
INTERPRETING = HAS_TRITON and os.environ.get('TRITON_INTERPRET') == '1'

BLOCK_POSITIONS = 32  # positions per program (the products' M dimension: at least 16)
PART_CHUNK = 16  # partial sums of the pooling combined at once

if HAS_TRITON:
    @triton.jit
    def _norm(x, channel, valid, mean_ptr, var_ptr, weight_ptr, bias_ptr, eps, AFFINE: tl.constexpr):
        """An eval-mode batch norm of ``x`` whose last axis (or only one) is ``channel``; 0 where not ``valid``."""
        mean = tl.load(mean_ptr + channel, mask=valid, other=0.).to(tl.float32)
        var = tl.load(var_ptr + channel, mask=valid, other=1.).to(tl.float32)
        scale = 1. / tl.sqrt(var + eps)
        if AFFINE:
            scale = scale * tl.load(weight_ptr + channel, mask=valid, other=0.).to(tl.float32)
            shift = tl.load(bias_ptr + channel, mask=valid, other=0.).to(tl.float32) - mean * scale
        else:
            scale = tl.where(valid, scale, 0.)
            shift = -mean * scale
        return x * scale + shift

    @triton.jit
    def _tanh(x):
        return 2. * tl.sigmoid(2. * x) - 1.

    # the interpreter's products of half types are wrong (Triton 3.8: integer arithmetic on their bits)
    _HALF_PRODUCTS = tl.constexpr(not INTERPRETING)

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr):
        """``a @ b`` accumulated in float32: float32 operands at ``PRECISION`` ('ieee' or 'tf32'), half ones as
        they are (tensor cores, as autocast's convolutions; in float32 under the interpreter)."""
        if a.dtype == tl.float32:
            return tl.dot(a, b, input_precision=PRECISION)
        if _HALF_PRODUCTS:
            return tl.dot(a, b)
        return tl.dot(a.to(tl.float32), b.to(tl.float32))

    @triton.jit
    def _score_value_kernel(
            x_ptr, stride_xb, stride_xc, stride_xp,
            w1_ptr, b1_ptr, m1_ptr, v1_ptr, g1_ptr, s1_ptr, eps1,
            w2_ptr, b2_ptr, m2_ptr, v2_ptr, g2_ptr, s2_ptr, eps2,
            wv_ptr, scores_ptr, values_ptr,
            HW, G: tl.constexpr, CG: tl.constexpr, HID: tl.constexpr, OUT: tl.constexpr, N: tl.constexpr,
            AFFINE1: tl.constexpr, AFFINE2: tl.constexpr, PRECISION: tl.constexpr,
            BLOCK_P: tl.constexpr, CG_P: tl.constexpr, HID_P: tl.constexpr, OUT_P: tl.constexpr, N_P: tl.constexpr,
    ):
        dtype = values_ptr.dtype.element_ty  # the products' operands in the compute dtype
        slab = tl.program_id(0)  # one (sample, mode)
        b, g = slab // G, slab % G
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        ci, hi, oi, ni = tl.arange(0, CG_P), tl.arange(0, HID_P), tl.arange(0, OUT_P), tl.arange(0, N_P)
        in_p, in_c, in_h, in_o, in_n = p < HW, ci < CG, hi < HID, oi < OUT, ni < N
        x = tl.load(x_ptr + b.to(tl.int64) * stride_xb + (g * CG + ci)[None, :] * stride_xc + p[:, None] * stride_xp,
                    mask=in_p[:, None] & in_c[None, :], other=0.).to(dtype)  # P x CG
        # logit branch: GC -> BN -> tanh -> GC -> BN, this mode's group of both convolutions
        w1 = tl.load(w1_ptr + (g * HID + hi)[None, :] * CG + ci[:, None], mask=in_c[:, None] & in_h[None, :],
                     other=0.).to(dtype)  # CG x HID
        hidden = _dot(x, w1, PRECISION)
        hidden += tl.load(b1_ptr + g * HID + hi, mask=in_h, other=0.).to(tl.float32)[None, :]
        hidden = _tanh(_norm(hidden, g * HID + hi, in_h, m1_ptr, v1_ptr, g1_ptr, s1_ptr, eps1, AFFINE1))
        w2 = tl.load(w2_ptr + (g * OUT + oi)[None, :] * HID + hi[:, None], mask=in_h[:, None] & in_o[None, :],
                     other=0.).to(dtype)  # HID x OUT
        scores = _dot(hidden.to(dtype), w2, PRECISION)
        scores += tl.load(b2_ptr + g * OUT + oi, mask=in_o, other=0.).to(tl.float32)[None, :]
        scores = _norm(scores, g * OUT + oi, in_o, m2_ptr, v2_ptr, g2_ptr, s2_ptr, eps2, AFFINE2)
        tl.store(scores_ptr + (b.to(tl.int64) * G * OUT + g * OUT + oi)[None, :] * HW + p[:, None],
                 scores.to(scores_ptr.dtype.element_ty), mask=in_p[:, None] & in_o[None, :])
        # value projection, channels last within the mode
        wv = tl.load(wv_ptr + (g * N + ni)[None, :] * CG + ci[:, None], mask=in_c[:, None] & in_n[None, :],
                     other=0.).to(dtype)  # CG x N
        values = _dot(x, wv, PRECISION)
        tl.store(values_ptr + (slab.to(tl.int64) * HW + p)[:, None] * N + ni[None, :],
                 values.to(values_ptr.dtype.element_ty), mask=in_p[:, None] & in_n[None, :])

    @triton.jit
    def _attend_kernel(
            scores_ptr, values_ptr, local_ptr, parts_ptr,
            w1_ptr, b1_ptr, m1_ptr, v1_ptr, g1_ptr, s1_ptr, eps1,
            w2_ptr, b2_ptr, m2_ptr, v2_ptr, g2_ptr, s2_ptr, eps2,
            H, W, h, w,
            G: tl.constexpr, N: tl.constexpr, MH: tl.constexpr, KERNEL: tl.constexpr, STRIDE: tl.constexpr,
            AFFINE1: tl.constexpr, AFFINE2: tl.constexpr, PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr,
            N_P: tl.constexpr, MH_P: tl.constexpr,
    ):
        slab = tl.program_id(0)
        b, g = slab // G, slab % G
        q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        ni, mi = tl.arange(0, N_P), tl.arange(0, MH_P)
        in_q, in_n, in_m = q < h * w, ni < N, mi < MH
        row, col = q // w, q % w
        score_base = scores_ptr + b.to(tl.int64) * G * (1 + KERNEL * KERNEL) * H * W
        value_base = values_ptr + slab.to(tl.int64) * H * W * N
        top = tl.full((BLOCK_Q,), float('-inf'), tl.float32)
        total = tl.zeros((BLOCK_Q,), tl.float32)
        acc = tl.zeros((BLOCK_Q, N_P), tl.float32)
        for dy in tl.static_range(KERNEL):
            for dx in tl.static_range(KERNEL):
                y = row * STRIDE + dy - KERNEL // 2
                x = col * STRIDE + dx - KERNEL // 2
                inside = in_q & (y >= 0) & (y < H) & (x >= 0) & (x < W)
                omega = tl.load(score_base + (G + g * KERNEL * KERNEL + dy * KERNEL + dx) * H * W
                                + row * STRIDE * W + col * STRIDE, mask=in_q, other=0.).to(tl.float32)
                nu = tl.load(score_base + g * H * W + y * W + x, mask=inside, other=0.).to(tl.float32)
                logit = omega + nu
                new_top = tl.maximum(top, logit)
                rescale = tl.exp(top - new_top)
                weight = tl.exp(logit - new_top)
                values = tl.load(value_base + (y * W + x)[:, None] * N + ni[None, :],
                                 mask=inside[:, None] & in_n[None, :], other=0.).to(tl.float32)
                total = total * rescale + weight
                acc = acc * rescale[:, None] + weight[:, None] * values
                top = new_top
        local = (acc / total[:, None]).to(local_ptr.dtype.element_ty)
        tl.store(local_ptr + (slab.to(tl.int64) * h * w + q)[:, None] * N + ni[None, :], local,
                 mask=in_q[:, None] & in_n[None, :])
        # the mask branch of this mode, on the stored (rounded) output
        w1 = tl.load(w1_ptr + (g * MH + mi)[None, :] * N + ni[:, None], mask=in_n[:, None] & in_m[None, :],
                     other=0.).to(local_ptr.dtype.element_ty)  # N x MH
        hidden = _dot(local, w1, PRECISION)
        hidden += tl.load(b1_ptr + g * MH + mi, mask=in_m, other=0.).to(tl.float32)[None, :]
        hidden = _tanh(_norm(hidden, g * MH + mi, in_m, m1_ptr, v1_ptr, g1_ptr, s1_ptr, eps1, AFFINE1))
        w2 = tl.load(w2_ptr + g * MH + mi, mask=in_m, other=0.).to(tl.float32)
        channel = g + tl.zeros((BLOCK_Q,), tl.int32)
        logit = tl.sum(hidden * w2[None, :], axis=1) + tl.load(b2_ptr + channel).to(tl.float32)
        logit = _norm(logit, channel, in_q, m2_ptr, v2_ptr, g2_ptr, s2_ptr, eps2, AFFINE2)
        # this block's share of the pooling m = softmax(logits) S: its largest logit, sum of exponentials and
        # exponential-weighted sum of S (``_modal_vector`` combines the blocks)
        logit = tl.where(in_q, logit, float('-inf'))
        top = tl.max(logit, axis=0)
        weight = tl.exp(logit - top)
        part = parts_ptr + (slab.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * (N + 2)
        tl.store(part + ni, tl.sum(weight[:, None] * local.to(tl.float32), axis=0), mask=in_n)
        tl.store(part + N, top)
        tl.store(part + N + 1, tl.sum(weight, axis=0))

    @triton.jit
    def _modal_vector(parts_ptr, slab, blocks, N: tl.constexpr, N_P: tl.constexpr, CHUNK: tl.constexpr):
        """m = M S of one (sample, mode) from the ``blocks`` partial sums ``_attend_kernel`` left: the softmax of the
        mask logits over the positions and the pooling, combined as an online softmax. (N_P,), float32."""
        ni = tl.arange(0, N_P)
        in_n = ni < N
        top = tl.max(tl.full((CHUNK,), float('-inf'), tl.float32), axis=0)
        total = tl.sum(tl.zeros((CHUNK,), tl.float32), axis=0)
        acc = tl.zeros((N_P,), tl.float32)
        for start in range(0, blocks, CHUNK):
            i = start + tl.arange(0, CHUNK)
            in_i = i < blocks
            part = parts_ptr + (slab.to(tl.int64) * blocks + i) * (N + 2)
            part_top = tl.load(part + N, mask=in_i, other=float('-inf'))
            part_total = tl.load(part + N + 1, mask=in_i, other=0.)
            part_acc = tl.load(part[:, None] + ni[None, :], mask=in_i[:, None] & in_n[None, :], other=0.)
            new_top = tl.maximum(top, tl.max(part_top, axis=0))
            rescale = tl.exp(top - new_top)
            weight = tl.exp(part_top - new_top)
            total = total * rescale + tl.sum(weight * part_total, axis=0)
            acc = acc * rescale + tl.sum(weight[:, None] * part_acc, axis=0)
            top = new_top
        return acc / total

    @triton.jit
    def _gate_kernel(
            local_ptr, parts_ptr, out_ptr,
            am_ptr, av_ptr, ag_ptr, as_ptr, aeps,
            im_ptr, iv_ptr, ig_ptr, is_ptr, ieps,
            HW, blocks, eps, scale,
            G: tl.constexpr, N: tl.constexpr, INTERACTION: tl.constexpr, AFFINE_A: tl.constexpr,
            AFFINE_I: tl.constexpr, BLOCK_P: tl.constexpr, G_P: tl.constexpr, N_P: tl.constexpr,
            PART_P: tl.constexpr,
    ):
        slab = tl.program_id(0)
        b, g = slab // G, slab % G
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        gi, ni = tl.arange(0, G_P), tl.arange(0, N_P)
        in_p, in_g, in_n = p < HW, gi < G, ni < N
        if INTERACTION:  # every modal vector of the sample (each program combines their partial sums)
            modes = tl.zeros((G_P, N_P), tl.float32)
            for j in tl.static_range(G):
                m_j = _modal_vector(parts_ptr, b * G + j, blocks, N, N_P, PART_P)
                modes = tl.where(gi[:, None] == j, m_j[None, :], modes)
            m = tl.sum(tl.where(gi[:, None] == g, modes, 0.), axis=0)
        else:
            m = _modal_vector(parts_ptr, slab, blocks, N, N_P, PART_P)
        nodes = tl.load(local_ptr + (slab.to(tl.int64) * HW + p)[:, None] * N + ni[None, :],
                        mask=in_p[:, None] & in_n[None, :], other=0.).to(tl.float32)  # P x N
        channel = g + tl.zeros((BLOCK_P,), tl.int32)
        alpha = tl.sigmoid(_norm(tl.sum(nodes * m[None, :], axis=1), channel, in_p,
                                 am_ptr, av_ptr, ag_ptr, as_ptr, aeps, AFFINE_A))
        out = nodes + alpha[:, None] * m[None, :]
        if INTERACTION:
            paths = tl.sum(modes * m[None, :], axis=1)  # row g of m m^T
            unit = paths / tl.maximum(tl.sqrt(tl.sum(paths * paths, axis=0)), eps)
            logit = tl.where(in_g, unit * scale, float('-inf'))
            weight = tl.exp(logit - tl.max(logit, axis=0))
            weight = weight / tl.sum(weight, axis=0)
            mixed = tl.sum(weight[:, None] * modes, axis=0)  # m'_g
            second = tl.sum(nodes * mixed[None, :], axis=1) + alpha * tl.sum(mixed * m, axis=0)
            alpha2 = tl.sigmoid(_norm(second, channel, in_p, im_ptr, iv_ptr, ig_ptr, is_ptr, ieps, AFFINE_I))
            out += alpha2[:, None] * mixed[None, :]
        tl.store(out_ptr + (b.to(tl.int64) * G * N + g * N + ni)[None, :] * HW + p[:, None],
                 out.to(out_ptr.dtype.element_ty), mask=in_p[:, None] & in_n[None, :])


def _block(size: int) -> int:
    """A block dimension of ``size`` for a product: a power of 2, at least 16."""
    return max(16, triton.next_power_of_2(size))


def _tensors(module, *names):
    """``module``'s parameters or buffers ``names`` (``None`` where unset), read from its dicts: ``nn.Module``'s
    ``__getattr__`` is a Python call per attribute (about 1 us on a 2-core VM), and this runs in every inference
    of every operator."""
    params, buffers = module._parameters, module._buffers
    return [params[name] if name in params else buffers.get(name) for name in names]


def _norm_args(norm):
    """Pointers and eps of an eval-mode ``nn.BatchNorm2d`` for ``_norm``, and whether it is affine."""
    mean, var, weight, bias = _tensors(norm, 'running_mean', 'running_var', 'weight', 'bias')
    affine = weight is not None
    return (mean, var, weight if affine else mean, bias if affine else mean, norm.eps), affine


def _conv_args(conv):
    """Weight and bias (``None`` without) of a 1x1 convolution."""
    return _tensors(conv, 'weight', 'bias')


def operator_norms(local, mode) -> list:
    """The norms the kernels apply (eval-mode ``nn.BatchNorm2d`` with running statistics, as ``_norm_args`` reads
    them): the logit and mask branches' two each, the gate norm and, with interaction, the interaction norm."""
    score, mask = local._modules['score'], mode._modules['mask']
    norms = [branch._modules[name] for branch in (score, mask) for name in ('bn1', 'bn2')]
    norms.append(mode._modules['gate_norm'])
    if mode.interaction:
        norms.append(mode._modules['interact_norm'])
    return norms


def _on_device(x: torch.Tensor):
    """Triton launches on the current CUDA device, not the tensors': make ``x``'s current where it is not."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def stra_inference(x: torch.Tensor, local, mode, dtype: torch.dtype) -> torch.Tensor:
    """StRA's operator in inference: ``mode(local(x))`` of eval-mode ``LocalAttention`` and ``ModeAttention``
    modules (per-mode layout between them), by the three kernels.

    Args:
        x: (B, C, H, W) on CUDA (or the CPU under ``TRITON_INTERPRET=1``), contiguous or channels last.
        local, mode: the operator's halves; their norms in eval mode with running statistics.
        dtype: the compute dtype (the input's, or autocast's): of the intermediate maps and the output.

    Returns:
        (B, C, ceil(H / s), ceil(W / s)) in ``dtype``, contiguous.
    """
    if not HAS_TRITON:
        raise RuntimeError('stra_inference needs triton (pip install triton); or use the PyTorch path.')
    B, C, H, W = x.shape
    G, k, s = local.groups, local.kernel_size, local.stride
    h, w = (H - 1) // s + 1, (W - 1) // s + 1
    score, mask = local._modules['score'], mode._modules['mask']
    score1, score2, mask1, mask2 = (branch._modules[name] for branch in (score, mask) for name in ('conv1', 'conv2'))
    (w1, b1), (w2, b2), (mw1, mb1), (mw2, mb2) = (_conv_args(c) for c in (score1, score2, mask1, mask2))
    value_weight = _tensors(local._modules['value'], 'weight')[0]
    cg, n = C // G, value_weight.shape[0] // G
    hid, out, mask_hid = w1.shape[0] // G, w2.shape[0] // G, mw1.shape[0] // G
    if x.stride(2) != W * x.stride(3):  # positions y * W + x one stride apart: NCHW and channels last are
        x = x.contiguous()
    scores = x.new_empty(B, G * out, H * W, dtype=dtype)
    values = x.new_empty(B, G, H * W, n, dtype=dtype)
    nodes = x.new_empty(B, G, h * w, n, dtype=dtype)
    blocks = triton.cdiv(H * W, BLOCK_POSITIONS), triton.cdiv(h * w, BLOCK_POSITIONS)
    parts = x.new_empty(B, G, blocks[1], n + 2, dtype=torch.float32)  # the pooling's partial sums, per block
    result = x.new_empty(B, G * n, h, w, dtype=dtype)
    norms = [_norm_args(norm) for norm in operator_norms(local, mode)]
    (bn1, affine1), (bn2, affine2), (mask_bn1, mask_affine1), (mask_bn2, mask_affine2), (gate, gate_affine) = norms[:5]
    interact, interact_affine = norms[5] if mode.interaction else norms[4]
    # float32 products as the PyTorch path's kernels take them: cuDNN's convolutions (the logit branch, the values)
    # and cuBLAS's products (the mask branch) in TF32 where PyTorch allows it them
    tf32 = x.is_cuda and dtype == torch.float32 and torch.cuda.get_device_capability(x.device)[0] >= 8
    conv_precision = 'tf32' if tf32 and torch.backends.cudnn.allow_tf32 else 'ieee'
    matmul_precision = 'tf32' if tf32 and torch.backends.cuda.matmul.allow_tf32 else 'ieee'
    with _on_device(x):
        _score_value_kernel[(B * G, blocks[0])](
            x, x.stride(0), x.stride(1), x.stride(3), w1, b1, *bn1, w2, b2, *bn2, value_weight, scores, values,
            H * W, G, cg, hid, out, n, affine1, affine2, conv_precision,
            BLOCK_P=BLOCK_POSITIONS, CG_P=_block(cg), HID_P=_block(hid), OUT_P=_block(out), N_P=_block(n))
        _attend_kernel[(B * G, blocks[1])](
            scores, values, nodes, parts, mw1, mb1, *mask_bn1, mw2, mb2, *mask_bn2, H, W, h, w, G, n, mask_hid, k, s,
            mask_affine1, mask_affine2, matmul_precision, BLOCK_Q=BLOCK_POSITIONS, N_P=_block(n), MH_P=_block(mask_hid))
        _gate_kernel[(B * G, blocks[1])](
            nodes, parts, result, *gate, *interact, h * w, blocks[1], NORMALIZE_EPS, math.sqrt(G), G, n,
            mode.interaction, gate_affine, interact_affine,
            BLOCK_P=BLOCK_POSITIONS, G_P=triton.next_power_of_2(G), N_P=_block(n), PART_P=PART_CHUNK)
    return result
