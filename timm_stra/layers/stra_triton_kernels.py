"""The Triton kernels of StRA's inference (``stra_triton.py`` launches them; see there for the whole).

Layouts: per (sample, mode) *slab*, positions ``y * W + x`` and channels last within the mode; every
kernel computes in float32, its products take their operands in the compute dtype (``_dot``).
"""
import os

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch on Linux; elsewhere the PyTorch path serves
    triton = None


def _triton_version_ok() -> bool:
    """Triton 3 or later: ``tl.dot(input_precision=...)`` (torch 2.4 and later bring it)."""
    try:
        return int(triton.__version__.split('.')[0]) >= 3
    except (AttributeError, ValueError):
        return False


HAS_TRITON = triton is not None and _triton_version_ok()
# Triton reads the variable when the kernels are defined: it runs them on CPU tensors from then on
INTERPRETING = HAS_TRITON and os.environ.get('TRITON_INTERPRET') == '1'

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
        """Logit branch and value projection of one (sample, mode) and block of positions: x (B, G * CG, HW) with
        the given strides (positions one stride apart) -> scores (B, G * OUT, HW) of this mode's conv group and
        values (B, G, HW, N), both in the compute dtype."""
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
        """Local attention and mask branch of one (sample, mode) and block of queries: scores (B, G * (1 + k*k),
        H * W) and values (B, G, H * W, N) -> S (B, G, h * w, N) in the compute dtype and this block's partial sums
        of the pooling, parts (B, G, blocks, N + 2): the weighted sum of S, the largest mask logit, the sum of
        exponentials (float32)."""
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
        """Modal vectors, mode interaction, gates and output of one (sample, mode): S (B, G, HW, N) and the partial
        sums (B, G, blocks, N + 2) -> Z (B, G * N, HW), channels first. The program gates the position blocks
        ``program_id(1)``, ``program_id(1) + num_programs(1)``, ...: it combines the partial sums once for all of
        them (a few programs per slab, so that the combining stays linear in the blocks)."""
        slab = tl.program_id(0)
        b, g = slab // G, slab % G
        gi, ni = tl.arange(0, G_P), tl.arange(0, N_P)
        in_g, in_n = gi < G, ni < N
        if INTERACTION:  # every modal vector of the sample, and m'_g
            modes = tl.zeros((G_P, N_P), tl.float32)
            for j in tl.static_range(G):
                m_j = _modal_vector(parts_ptr, b * G + j, blocks, N, N_P, PART_P)
                modes = tl.where(gi[:, None] == j, m_j[None, :], modes)
            m = tl.sum(tl.where(gi[:, None] == g, modes, 0.), axis=0)
            paths = tl.sum(modes * m[None, :], axis=1)  # row g of m m^T
            unit = paths / tl.maximum(tl.sqrt(tl.sum(paths * paths, axis=0)), eps)  # F.normalize's clamp
            logit = tl.where(in_g, unit * scale, float('-inf'))
            weight = tl.exp(logit - tl.max(logit, axis=0))
            weight = weight / tl.sum(weight, axis=0)
            mixed = tl.sum(weight[:, None] * modes, axis=0)  # m'_g
            overlap = tl.sum(mixed * m, axis=0)  # <m'_g, m_g>
        else:
            m = _modal_vector(parts_ptr, slab, blocks, N, N_P, PART_P)
        channel = g + tl.zeros((BLOCK_P,), tl.int32)
        for block in range(tl.program_id(1), blocks, tl.num_programs(1)):
            p = block * BLOCK_P + tl.arange(0, BLOCK_P)
            in_p = p < HW
            nodes = tl.load(local_ptr + (slab.to(tl.int64) * HW + p)[:, None] * N + ni[None, :],
                            mask=in_p[:, None] & in_n[None, :], other=0.).to(tl.float32)  # P x N
            alpha = tl.sigmoid(_norm(tl.sum(nodes * m[None, :], axis=1), channel, in_p,
                                     am_ptr, av_ptr, ag_ptr, as_ptr, aeps, AFFINE_A))
            out = nodes + alpha[:, None] * m[None, :]
            if INTERACTION:
                second = tl.sum(nodes * mixed[None, :], axis=1) + alpha * overlap
                alpha2 = tl.sigmoid(_norm(second, channel, in_p, im_ptr, iv_ptr, ig_ptr, is_ptr, ieps, AFFINE_I))
                out += alpha2[:, None] * mixed[None, :]
            tl.store(out_ptr + (b.to(tl.int64) * G * N + g * N + ni)[None, :] * HW + p[:, None],
                     out.to(out_ptr.dtype.element_ty), mask=in_p[:, None] & in_n[None, :])
