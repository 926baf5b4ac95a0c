"""The value projection and weighted neighbourhood sum of local attention, as batched matrix products.

``out[b, g, i, :] = sum_j attn[b, g, i, j] * value[b, g, s*i + offset_j, :]`` over the
k*k offsets of a window, with values outside the map taken as zero, where ``value``
is the grouped 1x1 projection of the input.

Layout. The projected values of each (sample, mode) *slab* are written channels last
into a buffer of rows: k // 2 zero rows, the slab's H map rows of (W, n), zero rows
below. The k x k windows of every query in one query row lie in k consecutive buffer
rows, a (k*W, n) matrix: the query row's *row window*. Consecutive row windows start
``stride`` rows apart across the whole buffer (slabs included, see ``slab_rows``), so
a single batched product over all of them computes every output::

    out[row window t] (w, n) = band[t] (w, k*W) @ window[t] (k*W, n)

where ``band[t]`` holds each query's k*k weights at its neighbours' columns and zeros
elsewhere (a neighbour outside the map has no weight: its row is a zero row, its column
is not in the band). Each slab has R / s windows; those after its last query row reach
into the next slab, have zero band rows and are dropped (the last slab's are not
computed at all: they would run past the buffer). The backward pass is the same
products transposed: ``grad band = grad out @ window^T`` (the weight gradients are its
band entries), and the gradient of the row buffer. At stride 1 that is the forward's
product again with the roles swapped: row j of the buffer reads the output gradient of
k consecutive query rows, one window of the gradient laid out by row, and a transposed band
holds their weights (``_build_band_transposed``). At stride 2 which query rows reach a
buffer row depends on its parity, so ``band^T @ grad out`` is gathered into the buffer
one window row offset at a time. The projected values are recomputed in backward from the
input (which the logit branch keeps anyway) rather than held, or taken from a recomputation
of the output that ran just before (``ValueRows``, as StRA's ``recompute_saved`` does).

This replaces k*k passes of elementwise multiply-adds over the values (memory bound)
by products that read them once; the band costs k*W / k*k times the multiply-adds
of the sum, cheap for the last-stage maps StRA runs on (W of 3 to 16). The zeros of
the band take part in the products, so a non-finite value (inf, NaN) spreads NaN over
the k query rows whose windows hold it, not only over its k x k neighbourhood; other
samples stay untouched, and in StRA the mode attention's pooling spreads it over its
sample anyway. Finite values give exactly the sum above.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .autocast import without_autocast
from .first_order import first_order_only
from .grouped_pointwise import grouped_pointwise_channels_last
from .tracing import is_compiling, plain_tensor


def slab_rows(height: int, kernel_size: int, stride: int) -> int:
    """Buffer rows of one slab: the map and k // 2 zero rows on either side, rounded up to a multiple of ``stride``.

    With R rows per slab (a multiple of s), row window t starts at buffer row s*t in every
    slab, R / s windows per slab, the first ``ceil(H / s)`` of them the slab's query rows.
    """
    rows = height + 2 * (kernel_size // 2)
    return -(-rows // stride) * stride


def _column_range(dx: int, kernel_size: int, stride: int, in_w: int, out_w: int) -> Tuple[int, int]:
    """Queries q whose neighbour at column offset ``dx`` (0..k-1) lies inside the map: [q0, q1)."""
    p = kernel_size // 2
    q0 = max(0, -(-(p - dx) // stride))
    q1 = min(out_w, (in_w - 1 - dx + p) // stride + 1)
    return q0, max(q0, q1)


def _band_entries(band: torch.Tensor, dx: int, out_h: int, stride: int) -> Tuple[torch.Tensor, int]:
    """View of the band entries at column offset ``dx`` for every slab, query row, valid query and row offset.

    Args:
        band: (B*G, R/s, w, k, W), contiguous and at the start of its storage (as ``as_strided`` addresses it).

    Returns:
        ((B*G, out_h, q1 - q0, k) view, q0): entry [.., r, q - q0, dy] weighs neighbour (s*r + dy - p,
        s*q + dx - p) of query (r, q).
    """
    slabs, _, out_w, k, in_w = band.shape
    q0, q1 = _column_range(dx, k, stride, in_w, out_w)
    st = band.stride()
    offset = q0 * st[2] + (stride * q0 + dx - k // 2) * st[4]
    return band.as_strided((slabs, out_h, q1 - q0, k), (st[0], st[1], st[2] + stride * st[4], st[3]), offset), q0


def _build_band(attn: torch.Tensor, windows_per_slab: int, in_w: int, kernel_size: int, stride: int) -> torch.Tensor:
    """(B, G, k*k, h, w) weights -> (B*G, R/s, w, k, W) band; rows of dropped windows and outside columns are zero."""
    B, G, _, h, w = attn.shape
    k = kernel_size
    band = attn.new_zeros(B * G, windows_per_slab, w, k, in_w)
    weights = attn.reshape(B * G, k, k, h, w)  # dy, dx
    for dx in range(k):
        entries, q0 = _band_entries(band, dx, h, stride)
        if entries.shape[2]:
            entries.copy_(weights[:, :, dx, :, q0:q0 + entries.shape[2]].permute(0, 2, 3, 1))
    return band


def _band_weights(grad_band: torch.Tensor, out_h: int, stride: int) -> torch.Tensor:
    """Inverse of ``_build_band`` on a gradient: (B*G, R/s, w, k, W) -> (B*G, k*k, h, w); outside neighbours get 0."""
    slabs, _, w, k, _ = grad_band.shape
    grad = grad_band.new_zeros(slabs, k, k, out_h, w)
    for dx in range(k):
        entries, q0 = _band_entries(grad_band, dx, out_h, stride)
        if entries.shape[2]:
            grad[:, :, dx, :, q0:q0 + entries.shape[2]] = entries.permute(0, 3, 1, 2)
    return grad.view(slabs, k * k, out_h, w)


def _build_band_transposed(attn: torch.Tensor, rows: int, in_w: int, kernel_size: int) -> torch.Tensor:
    """Stride 1: (B, G, k*k, H, W) weights -> (B*G*R, W, k*W) transposed band, zero elsewhere (a view of
    (B*G, R, W, k, W)).

    Row j of a slab is value row y = j - p (the rows of a row buffer) and reads the output gradient of
    query rows y - p .. y + p: entry [b, j, x, k - 1 - dy, q] weighs query (j - dy, q), whose neighbour
    at offset (dy, dx) is value (y, x). Rows outside the map get the weights of the neighbours outside
    it, which no value has: their products are computed and not read.
    """
    B, G, _, h, w = attn.shape
    k, p = kernel_size, kernel_size // 2
    band = attn.new_zeros(B * G, rows, in_w, k, w)
    weights = attn.reshape(B * G, k, k, h, w)  # dy, dx
    st = band.stride()
    for dx in range(k):
        q0, q1 = _column_range(dx, k, 1, in_w, w)
        if q1 > q0:
            # [b, r, q, dy] -> band[b, r + dy, q + dx - p, k - 1 - dy, q]
            offset = q0 * (st[2] + st[4]) + (dx - p) * st[2] + (k - 1) * st[3]
            entries = band.as_strided((B * G, h, q1 - q0, k), (st[0], st[1], st[2] + st[4], st[1] - st[3]), offset)
            entries.copy_(weights[:, :, dx, :, q0:q1].permute(0, 2, 3, 1))
    return band.view(B * G * rows, in_w, k * w)


def _project_into_rows(x: torch.Tensor, weight: torch.Tensor, groups: int, kernel_size: int,
                       stride: int) -> torch.Tensor:
    """Grouped 1x1 projection of ``x`` (B, C, H, W) laid out as a row buffer (B*G*R, W, n).

    Each slab: k // 2 zero rows, its H rows of projected values (channels last), zero rows up to R.
    """
    B, _, H, W = x.shape
    p, rows = kernel_size // 2, slab_rows(H, kernel_size, stride)
    value = grouped_pointwise_channels_last(x, weight, groups)  # B, G, H, W, n
    buffer = value.new_empty(B * groups, rows, W, value.shape[-1])
    buffer[:, :p].zero_()
    buffer[:, p + H:].zero_()
    buffer[:, p:p + H] = value.view(B * groups, H, W, -1)
    return buffer.view(B * groups * rows, W, -1)


def _window_count(slabs: int, height: int, kernel_size: int, stride: int) -> int:
    """Row windows up to the last query row of the last slab (the later ones would run past the buffer)."""
    return (slabs - 1) * (slab_rows(height, kernel_size, stride) // stride) + (height - 1) // stride + 1


def _row_windows(buffer: torch.Tensor, count: int, kernel_size: int, stride: int) -> torch.Tensor:
    """(count, k*W, n) overlapping view of a row buffer (at the start of its storage): window t is the k rows
    from row s*t."""
    _, W, n = buffer.shape
    return buffer.as_strided((count, kernel_size * W, n), (stride * W * n, n, 1))


def _grad_rows_unstrided(attn: torch.Tensor, grad_rows: torch.Tensor, buffer: torch.Tensor,
                         kernel_size: int) -> torch.Tensor:
    """Stride 1: the gradient of the row buffer, written into ``buffer`` (B*G*R, W, n) (whose values are no
    longer needed), as one product of the transposed band by windows of k consecutive rows of the output
    gradient (``grad_rows``: k - 1 zero rows, then the gradient by row window, R rows per slab)."""
    B, G, _, _, w = attn.shape
    rows, W, n = buffer.shape[0] // (B * G), buffer.shape[1], buffer.shape[2]
    band = _build_band_transposed(attn, rows, W, kernel_size)
    windows = grad_rows.as_strided((B * G * rows, kernel_size * w, n), (w * n, n, 1))
    return torch.bmm(band, windows, out=buffer)


def _grad_rows_strided(attn: torch.Tensor, grad: torch.Tensor, buffer: torch.Tensor, kernel_size: int,
                       stride: int) -> torch.Tensor:
    """Stride 2: the gradient of the row buffer, written into ``buffer`` (B*G*R, W, n): row window t's product
    with each band block dy, added to buffer row s*t + dy. ``grad`` is the output gradient by row window
    (count, w, n)."""
    B, G, _, _, w = attn.shape
    rows, W, n = buffer.shape[0] // (B * G), buffer.shape[1], buffer.shape[2]
    count, k = grad.shape[0], kernel_size
    band = _build_band(attn, rows // stride, W, k, stride).view(-1, w, k * W)[:count]
    grad_value = buffer.zero_()
    product = grad.new_empty(count, W, n)
    for dy in range(k):
        torch.bmm(band[:, :, dy * W:(dy + 1) * W].transpose(1, 2), grad, out=product)
        grad_value[dy:dy + stride * (count - 1) + 1:stride].add_(product)
    return grad_value


class ValueRows:
    """The row buffer of projected values, handed from a recomputation of the output to the backward pass.

    ``local_attend_recompute`` leaves its buffer here; the backward of the ``local_attend_sharing_rows`` call
    given the same holder takes it instead of projecting the values again (same input, same weight: the same
    buffer). Whoever recomputes the output in backward (``recompute_saved``) therefore saves the
    backward one projection, at the cost of holding the buffer from the recomputation to that backward.
    """
    __slots__ = ('buffer',)

    def __init__(self):
        self.buffer: Optional[torch.Tensor] = None

    def take(self) -> Optional[torch.Tensor]:
        buffer, self.buffer = self.buffer, None
        return buffer


def _attend(attn: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, kernel_size: int,
            stride: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The neighbourhood sums and the row buffer they read.

    Returns:
        ((B, G, R / s, w, n) outputs of every row window, dropped ones included, the first ``count`` computed;
        (B*G*R, W, n) row buffer; the weights ``attn``), all in the buffer's dtype (autocast's, under autocast).
    """
    B, w, W = attn.shape[0], attn.shape[4], x.shape[3]
    buffer = _project_into_rows(x, weight, groups, kernel_size, stride)
    windows = slab_rows(x.shape[2], kernel_size, stride) // stride  # per slab
    count = _window_count(B * groups, x.shape[2], kernel_size, stride)
    attn = attn.to(buffer.dtype)
    band = _build_band(attn, windows, W, kernel_size, stride).view(-1, w, kernel_size * W)[:count]
    out = buffer.new_empty(B, groups, windows, w, buffer.shape[-1])
    torch.bmm(band, _row_windows(buffer, count, kernel_size, stride), out=out.view(-1, w, out.shape[-1])[:count])
    return out, buffer, attn


def _query_rows(out: torch.Tensor, h: int, compact: bool) -> torch.Tensor:
    """(B, G, R / s, w, n) row-window outputs -> (B, G, h, w, n) outputs of the query rows."""
    if out.shape[2] == h:  # no dropped windows (k = 1): the tensor itself, not a view of it
        return out
    out = out[:, :, :h]
    return out.contiguous() if compact else out


class _LocalAttend(torch.autograd.Function):
    """Value projection and neighbourhood sum in one autograd node (see the module docstring).

    Only the input, the weights and the attention weights are kept for backward (and ``rows``, where a
    recomputation may leave the projected values: ``ValueRows``).
    """

    @staticmethod
    def forward(ctx, attn: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int,
                kernel_size: int, stride: int, compact: bool, rows: Optional[ValueRows]) -> torch.Tensor:
        out, _, attn_c = _attend(attn, x, weight, groups, kernel_size, stride)  # under autocast, in its dtype
        ctx.attn_dtype = attn.dtype
        ctx.save_for_backward(attn_c, x, weight)
        ctx.geometry = (groups, kernel_size, stride)
        ctx.rows = rows
        return _query_rows(out, attn.shape[3], compact)

    @staticmethod
    @first_order_only
    @without_autocast
    def backward(ctx, grad_out: torch.Tensor):
        attn, x, weight = ctx.saved_tensors
        groups, k, s = ctx.geometry
        B, C, H, W = x.shape
        h, w, n = grad_out.shape[2:]
        need_attn, need_value = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dtype = attn.dtype  # the forward's compute dtype (autocast does not reach backward)
        x_c, weight_c = x.to(dtype), weight.to(dtype)
        windows = slab_rows(H, k, s) // s  # per slab
        count = _window_count(B * groups, H, k, s)
        # the output gradient laid out by row window, zero at the dropped windows (their band rows are zero too,
        # but 0 * an uninitialised NaN would not be), after k - 1 zero rows (the windows of grad_value, stride 1)
        lead = k - 1 if s == 1 else 0
        grad_rows = grad_out.new_empty(lead * w * n + B * groups * windows * w * n, dtype=dtype)
        grad_rows[:lead * w * n].zero_()
        grad = grad_rows[lead * w * n:].view(B * groups, windows, w, n)
        grad[:, h:].zero_()
        grad[:, :h] = grad_out.reshape(B * groups, h, w, n)
        grad = grad.view(-1, w, n)[:count]
        # the values again, unless a recomputation of the output left them
        buffer = ctx.rows.take() if ctx.rows is not None else None
        if buffer is None or buffer.dtype != dtype or buffer.shape != (B * groups * slab_rows(H, k, s), W, n):
            buffer = _project_into_rows(x_c, weight_c, groups, k, s)
        grad_attn = grad_x = grad_weight = None
        if need_attn:
            grad_band = grad.new_empty(B * groups * windows, w, k * W)  # rows from count on are never read
            torch.bmm(grad, _row_windows(buffer, count, k, s).transpose(1, 2), out=grad_band[:count])
            grad_attn = _band_weights(grad_band.view(B * groups, windows, w, k, W), h, s)
            grad_attn = grad_attn.view(attn.shape).to(ctx.attn_dtype)
            del grad_band
        if need_value:
            # into the values' buffer
            if s == 1:
                grad_value = _grad_rows_unstrided(attn, grad_rows, buffer, k)
            else:
                grad_value = _grad_rows_strided(attn, grad, buffer, k, s)
            grad_value = grad_value.view(B, groups, -1, W, n)[:, :, k // 2:k // 2 + H]
            grad_value = grad_value.reshape(B, groups, H * W, n)  # a view: each slab's map rows are contiguous
            if ctx.needs_input_grad[1]:
                grad_x = torch.matmul(weight_c.view(groups, n, C // groups).transpose(1, 2), grad_value.transpose(2, 3))
                grad_x = grad_x.view(x.shape).to(x.dtype)
            if ctx.needs_input_grad[2]:
                nodes = x_c.view(B, groups, C // groups, H * W)
                grad_weight = torch.matmul(grad_value.transpose(2, 3), nodes.transpose(2, 3)).sum(0)
                grad_weight = grad_weight.view(weight.shape).to(weight.dtype)
        return grad_attn, grad_x, grad_weight, None, None, None, None, None


def local_attend_autograd(
        attn: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, kernel_size: int, stride: int,
) -> torch.Tensor:
    """Same as ``local_attend`` with plain differentiable ops: k*k shifted multiply-adds of the projected values.

    TorchScript runs it (eagerly slower, and it keeps more for backward); so does ``torch.compile``, which
    fuses the multiply-adds with the ops around them (seen in its generated CPU code), where the row-window
    path would leave it the band's many small copies and products (on an H200, ReID's last stage at batch 16,
    compiled in default mode, fp32: 0.82x the training step's time, 0.94x in inference;
    ``benchmarks/results/h200-2026-11-27/operator-compile.md``).
    """
    return local_sum(attn, grouped_pointwise_channels_last(x, weight, groups), kernel_size, stride)


def local_sum(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """The weighted neighbourhood sums of projected values, as k*k shifted multiply-adds (plain ops).

    Shapes:
        attn (B, G, k*k, out_h, out_w), value (B, G, H, W, n) -> (B, G, out_h, out_w, n)
    """
    attn = attn.to(value.dtype)  # the sum in the values' dtype (autocast's, under autocast), as the row-window path
    B, G, H, W, n = value.shape
    out_h, out_w = attn.shape[3], attn.shape[4]
    p = kernel_size // 2
    padded = F.pad(value, (0, 0, p, p, p, p))
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    out = torch.zeros(B, G, out_h, out_w, n, device=value.device, dtype=value.dtype)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            j = dy * kernel_size + dx
            out = out + attn[:, :, j].unsqueeze(-1) * padded[:, :, dy:dy + span_h:stride, dx:dx + span_w:stride]
    return out


@register_notrace_function
def local_attend(
        attn: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        groups: int,
        kernel_size: int,
        stride: int,
        compact: Optional[bool] = None,
) -> torch.Tensor:
    """Project the values (grouped 1x1 conv) and take each query's weighted sum of its k x k neighbours.

    Args:
        attn: (B, G, k*k, out_h, out_w) weights, offsets row-major.
        x: (B, C, H, W) input of the value projection.
        weight: (C_out, C / G, 1, 1) value projection weight, G = ``groups``; n = C_out / G.
        kernel_size: k (odd).
        stride: query stride s: query (i, j) sits at input position (s*i, s*j).

    Returns:
        (B, G, out_h, out_w, n), out_h = ceil(H / s) and out_w = ceil(W / s): channels last within
        each mode; each slab's (out_h * out_w, n) block is contiguous. A compact result is
        contiguous; otherwise the slabs are not (a view into the row-window outputs, which hold
        dropped windows too). ``compact=None`` makes it compact when it has gradients, since what
        follows may keep it for backward. TorchScript, ``torch.compile``, jit tracing, functorch transforms
        and forward-mode AD take ``local_attend_autograd``.
    """
    # an empty batch has no row buffer to window; a compiler fuses the plain ops' shifted sums (see there);
    # functorch transforms (vmap, jvp) and forward-mode AD need plain ops too (_LocalAttend has no rules for them)
    if torch.jit.is_scripting() or torch.jit.is_tracing() or x.shape[0] == 0 or is_compiling() or not plain_tensor(x):
        return local_attend_autograd(attn, x, weight, groups, kernel_size, stride)
    needs_grad = torch.is_grad_enabled() and (attn.requires_grad or x.requires_grad or weight.requires_grad)
    if compact is None:
        compact = needs_grad
    return _LocalAttend.apply(attn, x.contiguous(), weight, groups, kernel_size, stride, compact, None)


def local_attend_sharing_rows(
        attn: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, kernel_size: int, stride: int,
        rows: ValueRows,
) -> torch.Tensor:
    """``local_attend(..., compact=False)`` whose backward takes the projected values from ``rows`` when
    ``local_attend_recompute`` left them there (eager autograd; see ``ValueRows``)."""
    if x.shape[0] == 0:
        return local_attend_autograd(attn, x, weight, groups, kernel_size, stride)
    return _LocalAttend.apply(attn, x.contiguous(), weight, groups, kernel_size, stride, False, rows)


def local_attend_recompute(
        attn: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int, kernel_size: int, stride: int,
        rows: Optional[ValueRows],
) -> torch.Tensor:
    """The output of ``local_attend_sharing_rows`` again (same values, size, strides and storage size), without
    autograd, leaving the projected values in ``rows`` (if given) for that call's backward."""
    if x.shape[0] == 0:
        return local_attend_autograd(attn, x, weight, groups, kernel_size, stride)
    out, buffer, _ = _attend(attn, x.contiguous(), weight, groups, kernel_size, stride)
    if rows is not None:
        rows.buffer = buffer
    return _query_rows(out, attn.shape[3], compact=False)
