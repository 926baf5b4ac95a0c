"""Fused mode attention (one pass over S for both gates) against the step-by-step reference."""
import copy

import pytest
import torch
from timm.layers import freeze_batch_norm_2d

from timm_stra import StRAttention, diversity_per_sample
from timm_stra.layers import ModeAttention, ModeAttentionReference
from timm_stra.layers.grouped_pointwise import GroupedPointwiseConv


def _pair(dim, groups, interaction, dtype=torch.float32):
    fused = ModeAttention(dim, groups, interaction, dtype=dtype)
    for m in fused.modules():  # random BN statistics and affine parameters: eval mode is no identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1.0, 0.3)
            m.bias.data.normal_()
    ref = ModeAttentionReference(dim, groups, interaction, dtype=dtype)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('interaction', [True, False])
@pytest.mark.parametrize('size', [(6, 5), (1, 1)])
def test_matches_reference_forward_and_backward(train, interaction, size):
    # float64: the two orders of computation agree to rounding, which float32 would blur where a
    # training-mode BN divides by a small batch variance (and where a gradient is zero in exact arithmetic)
    fused, ref = _pair(32, 4, interaction, dtype=torch.float64)
    fused.train(train)
    ref.train(train)
    x = torch.randn(3, 32, *size, dtype=torch.float64).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = fused(x), ref(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-9, atol=1e-10, msg=name)
    for key, value in fused.state_dict().items():  # BN running statistics moved the same way in training
        torch.testing.assert_close(ref.state_dict()[key], value, rtol=1e-10, atol=1e-10, msg=key)


def test_a_mode_with_a_zero_modal_vector_matches_the_reference():
    """A mode whose channels are all zero has m = 0, so its row of the interaction affinities m m^T has norm 0:
    F.normalize clamps it, and the hand-written backward must route the gradient as autograd does there."""
    fused, ref = _pair(32, 4, True, dtype=torch.float64)
    x = torch.randn(2, 32, 4, 3, dtype=torch.float64)
    x[:, 8:16] = 0  # mode 1
    x = x.requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = fused(x), ref(x_ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_reference_operator_is_a_drop_in_for_the_fast_one():
    fast = StRAttention(64, stride=2, groups=8)
    ref = StRAttention(64, stride=2, groups=8, reference=True)
    assert type(ref.local).__name__ == 'LocalAttentionReference'
    assert type(ref.mode).__name__ == 'ModeAttentionReference'
    # the authors' grouped 1x1 convolutions: plain nn.Conv2d in the reference, batched products in ours
    for branch in (ref.local.score, ref.mode.mask):
        assert type(branch.conv1) is torch.nn.Conv2d and type(branch.conv2) is torch.nn.Conv2d
    for branch in (fast.local.score, fast.mode.mask):
        assert type(branch.conv1) is GroupedPointwiseConv and type(branch.conv2) is GroupedPointwiseConv
    ref.load_state_dict(fast.state_dict())  # strict: same parameters and buffers
    x = torch.randn(2, 64, 9, 7)
    torch.testing.assert_close(ref(x), fast(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(diversity_per_sample(ref), diversity_per_sample(fast))


@pytest.mark.parametrize('cls', [ModeAttention, ModeAttentionReference])
@pytest.mark.parametrize('interaction', [True, False])
def test_per_mode_input_is_the_same_attention(cls, interaction):
    """Input laid out channels last within each mode (as the local attention hands it over) gives the output,
    the gradients and the BN statistics of the channels-first input."""
    torch.manual_seed(0)
    a = cls(32, 4, interaction, dtype=torch.float64).train()
    b = cls(32, 4, interaction, per_mode=True, dtype=torch.float64).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 32, 5, 6, dtype=torch.float64, requires_grad=True)
    per_mode = x.detach().view(3, 4, 8, 5, 6).permute(0, 1, 3, 4, 2).contiguous().requires_grad_()
    out, out_pm = a(x), b(per_mode)
    torch.testing.assert_close(out_pm, out, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_pm.backward(grad)
    torch.testing.assert_close(per_mode.grad, x.grad.view(3, 4, 8, 5, 6).permute(0, 1, 3, 4, 2))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, msg=key)


def test_plain_mask_convolutions_take_the_same_path():
    """A mode attention whose mask branch keeps plain nn.Conv2d layers (fast_convs = False) runs the fast
    attention all the same, per-mode input included (the branch lays the nodes out as a map for the conv)."""
    class PlainConvs(ModeAttention):
        fast_convs = False

    torch.manual_seed(0)
    fast = ModeAttention(32, 4, per_mode=True, dtype=torch.float64).eval()
    plain = PlainConvs(32, 4, per_mode=True, dtype=torch.float64).eval()
    assert type(plain.mask.conv1) is torch.nn.Conv2d
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 4, 5, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(plain(x), fast(x))


def _autograd_nodes(t):
    """Names of every autograd node behind ``t``."""
    names, stack, seen = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize('interaction', [True, False])
def test_pooling_and_gates_are_one_autograd_node_in_eager_training(interaction):
    """With gradients the pooling, the gates and the output are one node (``mode_gating``); without, the plain
    path runs; both give the same output."""
    fused, _ = _pair(32, 4, interaction, dtype=torch.float64)
    fused.eval()  # running statistics: the same output with and without gradients
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64, requires_grad=True)
    out = fused(x)
    assert '_ModeGatingBackward' in _autograd_nodes(out)
    assert not {'SigmoidBackward0', 'NativeBatchNormBackward0'} & _autograd_nodes(out)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), out, rtol=1e-12, atol=1e-12)


def _functional_call(op, x, grad):
    params = {n: p.detach().clone().requires_grad_() for n, p in op.named_parameters()}
    torch.func.functional_call(op, params, (x,)).backward(grad)
    assert all(p.grad is None for p in op.parameters())
    return {n: p.grad for n, p in params.items()}


def _eval_before_backward(op, x, grad):
    out = op(x)
    op.eval()
    out.backward(grad)
    return {n: p.grad for n, p in op.named_parameters()}


def _frozen_norms(op, x, grad):
    op = freeze_batch_norm_2d(op)
    assert isinstance(op, ModeAttentionReference) or not op._gates_in_one_node(x)
    op(x).backward(grad)
    return {n: p.grad for n, p in op.named_parameters()}


@pytest.mark.parametrize('interaction', [True, False])
@pytest.mark.parametrize('case', [_functional_call, _eval_before_backward, _frozen_norms])
def test_gating_node_replays_the_norms_of_the_forward(case, interaction):
    """The node's backward replays the gate norms as its forward ran them (parameters swapped in by
    ``functional_call``; training mode though the module is in eval mode by backward), and timm's frozen norms,
    which it cannot replay, take the plain path: gradients equal the reference's."""
    fused, ref = _pair(32, 4, interaction, dtype=torch.float64)
    x = torch.randn(3, 32, 5, 6, dtype=torch.float64)
    grad = torch.randn(3, 32, 5, 6, dtype=torch.float64)
    got, want = case(fused.train(), x, grad), case(ref.train(), x, grad)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize('retain_graph', [False, True])
def test_backward_leaves_nothing_behind(retain_graph):
    """After a backward, the output (whose graph lives on) holds no more than the reference's does; a retained
    graph gives the same gradients a second time."""
    from timm_stra.benchmarks.tensor_memory import live_tensor_bytes
    fused, ref = _pair(32, 4, True)
    x = torch.randn(3, 32, 5, 6, requires_grad=True)
    grad = torch.randn(3, 32, 5, 6)

    def live_after_backward(op):
        def step():
            out = op.train()(x)
            out.backward(grad, retain_graph=retain_graph)
            return out
        x.grad = None
        out, _, live = live_tensor_bytes(step)
        return out, live

    _, live_ref = live_after_backward(ref)
    out, live = live_after_backward(fused)
    if not retain_graph:
        assert live == live_ref
        return
    first = [g.clone() for g in (x.grad, *(p.grad for p in fused.parameters()))]
    fused.zero_grad()
    x.grad = None
    out.backward(grad)
    for a, b in zip(first, [x.grad, *(p.grad for p in fused.parameters())]):
        torch.testing.assert_close(b, a)


def test_double_backward_is_refused():
    """Gradient penalties need the gradient's own graph, which the node does not build: an error, not a wrong
    second derivative."""
    fused = ModeAttention(16, 4, recompute=False, dtype=torch.float64)  # the mask branch is not replayed
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match='_ModeGating.backward is first-order only'):
        torch.autograd.grad(fused.train()(x).square().sum(), x, create_graph=True)


def test_non_reentrant_checkpointing_recomputes_once():
    """Under ``torch.utils.checkpoint`` the segment is recomputed once in backward, as for the reference: the
    node's replay in backward saves nothing through the checkpoint's hooks."""
    from torch.utils.checkpoint import checkpoint
    fused, ref = _pair(16, 4, True)
    counts = []
    for op in (fused, ref):
        op.train()
        calls = []
        op.mask.register_forward_hook(lambda *args: calls.append(1))
        x = torch.randn(2, 16, 4, 5, requires_grad=True)
        checkpoint(op, x, use_reentrant=False).square().sum().backward()
        counts.append((len(calls), int(op.gate_norm.num_batches_tracked)))
    assert counts[0] == counts[1] == (2, 2)


def _plain(op):
    """The same module, its gates taking the plain autograd path."""
    plain = copy.deepcopy(op)
    plain._gates_in_one_node = lambda nodes: False
    return plain


def _grads(op, x, grad, autocast=False):
    x = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = op(x)
    out.backward(grad.to(out.dtype))
    return [out.detach(), x.grad] + [p.grad for p in op.parameters() if p.requires_grad]


@pytest.mark.parametrize('variant', ['affine_off', 'frozen_weight', 'eval', 'no_running_stats'])
@pytest.mark.parametrize('interaction', [True, False])
def test_gating_node_matches_the_plain_path_for_every_kind_of_norm(variant, interaction):
    """The hand-written gates backward against autograd through the same module's plain path (float64): norms
    without affine parameters, a frozen weight, eval mode (running statistics), no running statistics."""
    torch.manual_seed(0)
    op, _ = _pair(32, 4, interaction, dtype=torch.float64)
    norms = [op.gate_norm] + ([op.interact_norm] if interaction else [])
    if variant in ('affine_off', 'no_running_stats'):
        for name, norm in zip(('gate_norm', 'interact_norm'), norms):
            setattr(op, name, torch.nn.BatchNorm2d(4, affine=variant != 'affine_off', dtype=torch.float64,
                                                   track_running_stats=variant != 'no_running_stats'))
    elif variant == 'frozen_weight':
        for norm in norms:
            norm.weight.requires_grad_(False)
    op.train(variant != 'eval')
    x = torch.randn(3, 32, 5, 4, dtype=torch.float64)
    assert op._gates_in_one_node(x)
    plain = _plain(op)
    grad = torch.randn(3, 32, 5, 4, dtype=torch.float64)
    for got, want in zip(_grads(op, x, grad), _grads(plain, x, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_gating_node_under_bf16_autocast_is_as_close_to_float64_as_the_plain_path():
    """Under bf16 autocast the node's output and gradients err from float64 no more than the plain path's (give or
    take 1% of each tensor's scale; a gradient that is zero in exact arithmetic, like a bias before a training-mode
    BN, is all rounding)."""
    torch.manual_seed(0)
    op, _ = _pair(32, 4, True)
    exact = copy.deepcopy(op).double()
    x = torch.randn(3, 32, 5, 4)
    grad = torch.randn(3, 32, 5, 4)
    want = _grads(exact, x.double(), grad.double())
    errors = []
    for module in (op, _plain(op)):
        got = _grads(module, x, grad, autocast=True)
        assert got[0].dtype == torch.bfloat16
        errors.append([(g.double() - w).abs().max().item() / max(1.0, w.abs().max().item())
                       for g, w in zip(got, want, strict=True)])
    for i, (node, plain) in enumerate(zip(*errors)):
        assert node <= 1.5 * plain + 0.01, (i, node, plain)


@pytest.mark.parametrize('train', [True, False])
def test_float16_model_with_a_zero_modal_vector_gives_a_finite_output(train):
    """A float16 model (``.half()``, no autocast) with a mode whose channels are all zero: F.normalize's 1e-12 clamp
    is 0 in float16, so normalising the interaction affinities there gave 0 / 0. They are normalised in float32.
    (Training such a model in float16 is another matter: the exact gradient at a zero row is 1 / 1e-12 times the
    incoming one, beyond float16's range, as in the authors' formulation.)"""
    torch.manual_seed(0)
    op = ModeAttention(32, 4).half().train(train)
    plain = _plain(op)
    x = torch.randn(2, 32, 4, 3, dtype=torch.float16)
    x[:, 8:16] = 0
    x.requires_grad_()
    with torch.set_grad_enabled(train):  # the gating node with gradients, the plain path without
        assert op._gates_in_one_node(x) == train
        out, want = op(x), plain(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out, want)
