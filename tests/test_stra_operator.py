"""The composite StRA operator and its ablation knobs."""
import math
import re

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from timm_stra.layers import (LOCAL_OPS, MODES, LocalAttention, ModeAttention, SelfAttention2d, StRAttention,
                              mask_diversity)


@pytest.mark.parametrize('local_op', LOCAL_OPS)
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('stride', [1, 2])
def test_every_knob_combination_shapes_and_gradients(local_op, mode, stride):
    op = StRAttention(32, stride=stride, groups=4, local_op=local_op, mode=mode)
    x = torch.randn(2, 32, 5, 4, requires_grad=True)
    out = op(x)
    assert out.shape == (2, 32, math.ceil(5 / stride), math.ceil(4 / stride))
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in op.parameters())


@pytest.mark.parametrize('channels, groups', [(8, 1), (12, 3), (64, 16), (40, 8)])
@pytest.mark.parametrize('kernel_size', [3, 5, 7])
def test_any_groups_and_window(channels, groups, kernel_size):
    op = StRAttention(channels, groups=groups, kernel_size=kernel_size)
    assert op(torch.randn(2, channels, 6, 3)).shape == (2, channels, 6, 3)


@pytest.mark.parametrize('stride', [1, 2])
def test_single_position_map(stride):
    op = StRAttention(16, stride=stride, groups=4).eval()
    out = op(torch.randn(1, 16, 1, 1))
    assert out.shape == (1, 16, 1, 1) and torch.isfinite(out).all()


def test_mode_attention_equations_by_hand():
    """Eq. 3 written out with explicit loops on a tiny input, against the vectorised module."""
    torch.manual_seed(1)
    G, n, H, W = 2, 3, 2, 2
    mode = ModeAttention(G * n, groups=G).eval()
    for bn in (mode.gate_norm, mode.interact_norm):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, G * n, H, W)
    M = mode.spatial_masks(x)[0].flatten(1)                  # G, N
    S = x[0].view(G, n, H * W)
    m = torch.stack([sum(M[g, i] * S[g, :, i] for i in range(H * W)) for g in range(G)])

    def gate(bn, vec, nodes):
        e = torch.stack([torch.stack([vec[g] @ nodes[g, :, i] for i in range(H * W)]) for g in range(G)])
        e = (e - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps)
        return torch.sigmoid(e * bn.weight[:, None] + bn.bias[:, None])

    Y = S + gate(mode.gate_norm, m, S)[:, None, :] * m[:, :, None]
    P = m @ m.T
    P = torch.softmax(math.sqrt(G) * P / P.norm(dim=1, keepdim=True), dim=1)
    m2 = P @ m
    Z = Y + gate(mode.interact_norm, m2, Y)[:, None, :] * m2[:, :, None]
    torch.testing.assert_close(mode(x)[0].view(G, n, H * W), Z, rtol=1e-5, atol=1e-5)
    without = ModeAttention(G * n, groups=G, interaction=False).eval()
    without.load_state_dict(mode.state_dict(), strict=False)
    torch.testing.assert_close(without(x)[0].view(G, n, H * W), Y, rtol=1e-5, atol=1e-5)


def test_mask_diversity_bounds():
    disjoint = torch.eye(4).view(1, 4, 2, 2)          # each mode on its own position
    same = torch.full((1, 4, 2, 2), 0.25)               # all modes uniform
    assert mask_diversity(disjoint).item() == 0.0
    assert mask_diversity(same).item() == pytest.approx(3.0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_sasa_masks_positions_outside_the_map(dtype):
    """With zero keys and position embeddings, out-of-map neighbours must not dilute the average (in float64 to
    float64's precision: the softmax is not rounded to float32 there)."""
    op = SelfAttention2d(16, heads=2, kernel_size=7, qkv_groups=2).to(dtype)
    torch.nn.init.zeros_(op.key.weight)
    torch.nn.init.zeros_(op.rel_h)
    torch.nn.init.zeros_(op.rel_w)
    x = torch.randn(1, 16, 3, 3, dtype=dtype)
    out = op(x)
    mean_value = op.value(x).mean(dim=(2, 3), keepdim=True).expand_as(out)
    torch.testing.assert_close(out, mean_value)  # (float64's default tolerance is 1e-7 relative)
    if dtype == torch.float64:
        torch.testing.assert_close(out, mean_value, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(dim=30, groups=8), ValueError, '30 channels cannot be split into 8 modes'),
    (dict(dim=32, local_op='deformable'), ValueError, "Unknown local_op 'deformable'"),
    (dict(dim=32, mode='half'), ValueError, "Unknown mode 'half'"),
    (dict(dim=32, local_op='conv', kernel_size=4), ValueError, "local_op='conv': kernel_size must be odd"),
    (dict(dim=32, local_op='group_conv', kernel_size=0), ValueError, "local_op='group_conv': kernel_size must be odd"),
    (dict(dim=32, reduction=0), ValueError, 'reduction must be >= 1'),
    (dict(dim=32, reduction=-1), ValueError, 'reduction must be >= 1'),
    (dict(dim=32, local_op='conv', stride=3), ValueError, 'stride must be 1 or 2'),
    (dict(dim=32, local_op='sasa', stride=0), ValueError, 'stride must be 1 or 2'),
])
def test_bad_configuration(kwargs, error, message):
    with pytest.raises(error, match=message):
        StRAttention(**kwargs)


def test_bad_input():
    op = StRAttention(32, groups=4)
    with pytest.raises(ValueError, match='expects a \\(B, C, H, W\\) feature map, got a tensor with 3 dimensions'):
        op(torch.randn(32, 4, 4))
    with pytest.raises(ValueError, match='built for 32 input channels, got a feature map with 16 channels'):
        op(torch.randn(1, 16, 4, 4))


def test_bad_input_to_the_halves_on_their_own():
    """The halves, exported too, say what is wrong where their products would give a shape error."""
    x = torch.randn(2, 16, 5, 6)
    for op in (LocalAttention(32, groups=4), ModeAttention(32, groups=4)):
        with pytest.raises(ValueError, match=f'{type(op).__name__} was built for 32 input channels, got a feature '
                                             'map with 16 channels'):
            op(x)
    with pytest.raises(ValueError, match=r'ModeAttention \(per_mode\) expects a \(B, G, H, W, C / G\) = '
                                         r'\(B, 4, H, W, 8\) map, got shape torch.Size\(\[2, 4, 5, 6, 4\]\)'):
        ModeAttention(32, groups=4, per_mode=True)(torch.randn(2, 4, 5, 6, 4))


@pytest.mark.parametrize('kwargs, message', [
    (dict(dim=28, heads=8), '28 channels cannot be split into 8 heads; choose heads that divide 28'),  # (said modes)
    (dict(dim=32, qkv_groups=3), '32 channels cannot be split into 3 query, key and value groups; choose '
                                 'qkv_groups that'),
    (dict(dim=32, kernel_size=-1), 'kernel_size must be odd and >= 1, got -1'),  # (a negative-size tensor)
    (dict(dim=32, kernel_size=4), 'kernel_size must be odd and >= 1, got 4'),
])
def test_sasa_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(f'SelfAttention2d: {message}')):
        SelfAttention2d(**kwargs)


def test_sasa_bad_input():
    op = SelfAttention2d(32)
    with pytest.raises(ValueError, match=r'SelfAttention2d expects a \(B, C, H, W\) feature map, got a tensor with 3'):
        op(torch.randn(32, 4, 4))  # (it was 'not enough values to unpack')
    with pytest.raises(ValueError, match='SelfAttention2d was built for 32 input channels, got a feature map with 16'):
        op(torch.randn(1, 16, 4, 4))


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('mode', ['full', 'no_interaction'])
def test_fused_layout_hand_over_is_the_plain_composition(mode, stride):
    """The fast local attention hands its per-mode channels-last output to the mode attention as it is; the
    result, gradients included, is that of the two halves through the channels-first layout."""
    op = StRAttention(32, stride=stride, groups=4, mode=mode).double()
    assert op.per_mode and op.local.per_mode and op.mode.per_mode
    assert not StRAttention(32, reference=True).per_mode
    assert not StRAttention(32, local_op='conv').per_mode and not StRAttention(32, mode='none').local.per_mode
    local = LocalAttention(32, groups=4, stride=stride).double()
    mode_attn = ModeAttention(32, groups=4, interaction=mode == 'full').double()
    local.load_state_dict(op.local.state_dict())
    mode_attn.load_state_dict(op.mode.state_dict())
    x = torch.randn(2, 32, 7, 6, dtype=torch.float64, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    out = op(x)
    plain = mode_attn(local(x_plain))
    torch.testing.assert_close(out, plain, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    fused_grads = torch.autograd.grad(out, [x, *op.parameters()], grad)
    plain_grads = torch.autograd.grad(plain, [x_plain, *local.parameters(), *mode_attn.parameters()], grad)
    for g, g_plain in zip(fused_grads, plain_grads):
        torch.testing.assert_close(g, g_plain, rtol=1e-9, atol=1e-10)


@pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing')
def test_halves_trace_with_torch_fx_on_their_own():
    """The layout is a constructor choice, not a forward argument, so each half traces by itself (with timm's
    fx feature extraction, which keeps the registered kernels as leaves) and the trace computes the same."""
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names
    for module, x in ((LocalAttention(16, groups=4, per_mode=True), torch.randn(2, 16, 5, 4)),
                      (ModeAttention(16, groups=4, per_mode=True), torch.randn(2, 4, 5, 4, 4)),
                      (StRAttention(16, groups=4), torch.randn(2, 16, 5, 4))):
        module.eval()
        last = get_graph_node_names(module)[1][-1]
        extractor = create_feature_extractor(module, return_nodes={last: 'out'})
        torch.testing.assert_close(extractor(x)['out'], module(x))


@pytest.mark.parametrize('device', ['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
@pytest.mark.parametrize('training', [True, False])
def test_compiled_under_autocast_with_an_input_that_needs_no_gradient(training, device):
    """``torch.compile`` of the operator in a bf16 autocast region, its input needing no gradient (its parameters
    do): the compiled products cast as autocast would (torch.compile traces an autograd.Function's forward without
    autocast's casts, which once made the second grouped product multiply a float32 weight by bf16 values: an
    error). Values as eager's, bf16 like them."""
    op = StRAttention(32, groups=4).train(training).to(device)
    x = torch.randn(2, 32, 7, 6, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        want = op(x)
        got = torch.compile(op, backend='aot_eager', fullgraph=True)(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


def _fast_and_reference(stride=1, mode='full'):
    torch.manual_seed(0)
    fast = StRAttention(32, stride=stride, groups=4, mode=mode)
    ref = StRAttention(32, stride=stride, groups=4, mode=mode, reference=True)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize('stride', [1, 2])
def test_pruned_layers_train_as_in_the_reference(stride):
    """Pruning (a forward pre-hook that rebuilds the weight) on layers the fast paths read without calling."""
    ops = _fast_and_reference(stride)
    for op in ops:
        op.train()
        for layer in (op.local.value, op.local.score.conv1, op.mode.mask.conv1):
            prune.l1_unstructured(layer, 'weight', 0.5)
    x = torch.randn(2, 32, 6, 4)
    for _ in range(2):  # the second step runs on the weights rebuilt from the updated originals
        outs = []
        for op in ops:
            op.zero_grad()
            out = op(x)
            out.square().mean().backward()
            outs.append(out.detach())
            with torch.no_grad():
                for p in op.parameters():
                    p -= 0.1 * p.grad
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for name in ('local.value.weight_orig', 'local.score.conv1.weight_orig', 'mode.mask.conv1.weight_orig'):
        torch.testing.assert_close(ops[0].get_parameter(name), ops[1].get_parameter(name), rtol=1e-4, atol=1e-5)


def test_forward_hooks_on_the_local_operator_run_in_training():
    op = StRAttention(32, groups=4).train()
    seen = []
    op.local.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    op(torch.randn(2, 32, 6, 4)).sum().backward()
    assert len(seen) == 1


@pytest.mark.parametrize('training', [False, True])
def test_forward_mode_ad_takes_the_plain_ops(training):
    from torch.autograd import forward_ad
    ops = _fast_and_reference()
    x, tangent = torch.randn(2, 32, 6, 4), torch.randn(2, 32, 6, 4)
    results = []
    for op in ops:
        op.train(training)
        with forward_ad.dual_level():
            out = forward_ad.unpack_dual(op(forward_ad.make_dual(x, tangent)))
        results.append((out.primal, out.tangent))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_vmap_and_jvp_in_eval_mode():
    ops = _fast_and_reference()
    x, tangent = torch.randn(3, 32, 6, 4), torch.randn(3, 32, 6, 4)
    mapped = [torch.func.vmap(op.eval())(x[:, None]) for op in ops]
    torch.testing.assert_close(mapped[0], mapped[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mapped[0][:, 0], ops[1](x), rtol=1e-4, atol=1e-5)
    primal, jvp = torch.func.jvp(ops[0], (x,), (tangent,))
    torch.testing.assert_close(jvp, torch.func.jvp(ops[1], (x,), (tangent,))[1], rtol=1e-4, atol=1e-5)


def test_float64_runs_in_float64():
    """The softmaxes take float32 statistics at least, not at most: a float64 operator matches the float64
    reference to float64's precision (values and gradients), as gradcheck-style checks need."""
    torch.manual_seed(0)
    fast = StRAttention(32, groups=4).double().train()
    ref = StRAttention(32, groups=4, reference=True).double().train()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64, requires_grad=True)
    out_fast, out_ref = fast(x), ref(x)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out_fast)
    (g_fast,), (g_ref,) = torch.autograd.grad(out_fast, x, grad), torch.autograd.grad(out_ref, x, grad)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('target', ['', 'local', 'local.value', 'local.score.conv1', 'local.score.bn1', 'mode.mask.bn2',
                                    'mode.gate_norm', 'mode.interact_norm'])
def test_full_backward_hooks_run_and_see_the_reference_gradients(target):
    """A backward hook on a layer the fast paths would read without calling takes it through its plain path:
    the hook runs once, with the reference's gradients (they used to be skipped silently)."""
    seen = {}
    for op in _fast_and_reference(stride=2):
        op.train().get_submodule(target).register_full_backward_hook(
            lambda module, grad_in, grad_out, key=op.local_op + str(op.recompute): seen.setdefault(key, []).append(
                grad_out[0].clone()))
        x = torch.randn(2, 32, 6, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
        op(x).square().sum().backward()
    (fast,), (ref,) = seen['localTrue'], seen['localFalse']
    if fast.dim() == 5:  # the fast local half's output, per mode: (B, G, h, w, n)
        fast = fast.permute(0, 1, 4, 2, 3).flatten(1, 2)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
def test_mode_attention_input_edited_in_place_is_not_recomputed(stride):
    """With a 1x1 window the local output is no view, so a forward pre-hook may edit mode attention's input in
    place: backward must use the edited values (it recomputed the ones before the edit)."""
    torch.manual_seed(0)
    fast = StRAttention(32, stride=stride, groups=4, kernel_size=1).double().train()
    ref = StRAttention(32, stride=stride, groups=4, kernel_size=1, reference=True).double().train()
    ref.load_state_dict(fast.state_dict())
    grads = []
    for op in (fast, ref):
        op.mode.register_forward_pre_hook(lambda module, args: (args[0].relu_(), None)[1])
        x = torch.randn(2, 32, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
        op(x).square().sum().backward()
        grads.append((x.grad, op.local.value.weight.grad, op.mode.mask.conv1.weight.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('transform', ['grad', 'vmap'])
def test_functorch_transforms_over_the_parameters_only(transform):
    """``torch.func`` over the parameters of ``functional_call`` (the input an unwrapped tensor, closed over)
    takes the plain ops: the hand-written backward passes have no functorch rules and used to raise."""
    fast, ref = (op.double().eval() for op in _fast_and_reference(stride=2))
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    results = []
    for op in (fast, ref):
        params = {name: p.detach() for name, p in op.named_parameters()}
        buffers = dict(op.named_buffers())
        if transform == 'grad':
            out = torch.func.grad(lambda p: torch.func.functional_call(op, (p, buffers), (x,)).square().sum())(params)
        else:
            stacked = {name: torch.stack([p, 2 * p]) for name, p in params.items()}
            out = {'': torch.func.vmap(lambda p: torch.func.functional_call(op, (p, buffers), (x,)))(stacked)}
        results.append(out)
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-9, atol=1e-9)


def test_jit_trace_records_no_python_ops_and_saves(tmp_path):
    """``torch.jit.trace`` takes the plain ops (a hand-written autograd node is a Python op, which cannot be
    saved), and its check of the trace passes with gradients on."""
    op = _fast_and_reference(stride=2)[0].eval()
    x = torch.randn(2, 32, 6, 5)
    traced = torch.jit.trace(op, x)
    assert not [node for node in traced.inlined_graph.nodes() if node.kind() == 'prim::PythonOp']
    traced.save(str(tmp_path / 'op.pt'))
    torch.testing.assert_close(torch.jit.load(str(tmp_path / 'op.pt'))(x), op(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('half', ['local', 'mode', 'operator'])
@pytest.mark.parametrize('recompute', [True, False])
def test_second_derivatives_are_refused_by_name(half, recompute):
    """The hand-written backward passes are first-order: asking for a differentiable gradient (create_graph=True,
    as a gradient penalty does) raises at once. (With once_differentiable, torch.autograd.grad(penalty, x) skipped
    its error node and returned a partial gradient or none; the local half said 'functions with out=... arguments
    don't support automatic differentiation'.)"""
    torch.manual_seed(0)
    op = StRAttention(32, stride=2, groups=4, recompute=recompute).train()
    module = {'local': op.local, 'mode': op.mode, 'operator': op}[half]
    x = torch.randn(2, 32, 6, 5, requires_grad=True)
    if half == 'mode':
        x = op.local(x).detach().requires_grad_()  # (per-mode layout)
    with pytest.raises(RuntimeError, match='is first-order only: .* Build the model with reference=True'):
        torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
    (grad,) = torch.autograd.grad(module(x).square().sum(), x)  # first order: as before
    assert grad.shape == x.shape and grad.abs().sum() > 0


@pytest.mark.parametrize('stride', [1, 2])
def test_sasa_ablation_is_the_papers_8_heads_over_7x7(stride):
    """SPEC 2: the SASA ablation has 8 heads and a 7x7 window whatever kernel_size says (the heads change neither
    the parameters nor the counted MACs: only the output tells them apart)."""
    op = StRAttention(64, stride=stride, groups=8, kernel_size=3, local_op='sasa', mode='none').eval()
    assert op.local.heads == 8 and op.local.kernel_size == 7
    paper = SelfAttention2d(64, heads=8, kernel_size=7, stride=stride, qkv_groups=8).eval()
    paper.load_state_dict(op.local.state_dict())
    x = torch.randn(2, 64, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(op.local(x), paper(x))


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(groups='8'), TypeError, "StRAttention: groups must be an integer, got '8' (str)."),  # a bare '<' TypeError
    (dict(kernel_size=(3, 3)), TypeError, 'StRAttention: kernel_size must be an integer, got (3, 3) (tuple).'),
    (dict(reduction=2.0), TypeError, 'StRAttention: reduction must be an integer, got 2.0 (float).'),
    (dict(local_op='sasa', kernel_size=5), ValueError, "local_op='sasa' uses the paper's 7x7 window and 8 heads; "
                                                       'kernel_size=5 sets the window of local, conv and group_conv'),
])
def test_arguments_of_the_wrong_type_or_ignored_are_refused_by_name(kwargs, error, message):
    """SASA ignored kernel_size without a word (config.json still recorded it)."""
    with pytest.raises(error, match=re.escape(message)):
        StRAttention(64, **kwargs)


def test_numpy_integer_arguments_are_taken_as_ints():
    op = StRAttention(np.int64(64), groups=np.int32(4), kernel_size=np.int64(5))
    assert (op.local.groups, op.local.kernel_size) == (4, 5) and type(op.dim) is int
    assert StRAttention(64, local_op='sasa', kernel_size=7).local.kernel_size == 7
