"""Recomputing in backward (``recompute=True``, the default) gives what keeping gives, and keeps less."""
import copy

import pytest
import torch
from timm.layers import freeze_batch_norm_2d

from timm_stra.benchmarks.tensor_memory import live_tensor_bytes
from timm_stra.layers import StRAttention
from timm_stra.layers.recompute_saved import recompute_saved
from timm_stra.layers.score_branch import ScoreBranch


def _pair(dim=32, **kwargs):
    """The same operator twice: recomputing and keeping."""
    torch.manual_seed(0)
    recomputing = StRAttention(dim, **kwargs)
    keeping = StRAttention(dim, recompute=False, **kwargs)
    keeping.load_state_dict(recomputing.state_dict())
    # non-trivial norms, so that a wrong replay of them would show
    for bn in (m for m in recomputing.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.1, 0.1)
    keeping.load_state_dict(recomputing.state_dict())
    return recomputing, keeping


def _step(op, x, grad, backwards=1):
    x = x.clone().requires_grad_()
    y = op(x)
    for i in range(backwards):
        y.backward(grad, retain_graph=i + 1 < backwards)
    return y.detach(), x.grad, {n: p.grad for n, p in op.named_parameters()}


def _assert_same_step(recomputing, keeping, x, backwards=1):
    grad = torch.randn_like(keeping(x)).mul_(1e-1)  # also a first, unchecked step for both
    recomputing(x)
    got, want = _step(recomputing, x, grad, backwards), _step(keeping, x, grad, backwards)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], msg=name)
    # the running statistics moved once per forward, as when keeping
    for (name, a), b in zip(recomputing.named_buffers(), keeping.buffers()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('mode', ['full', 'no_interaction'])
def test_same_values_gradients_and_running_stats(stride, mode):
    recomputing, keeping = _pair(stride=stride, mode=mode)
    _assert_same_step(recomputing, keeping, torch.randn(3, 32, 7, 6))


@pytest.mark.parametrize('stride', [1, 2])
def test_backward_takes_the_projected_values_of_the_recomputation(stride, monkeypatch):
    """Recomputing the local output projects the values; the local attention's backward then uses those
    rather than projecting a third time: a training step projects twice, as when keeping."""
    from timm_stra.layers import local_attend as local_attend_module
    calls = []
    project = local_attend_module._project_into_rows
    monkeypatch.setattr(local_attend_module, '_project_into_rows', lambda *a: calls.append(1) or project(*a))
    recomputing, keeping = _pair(stride=stride)
    x = torch.randn(3, 32, 7, 6)
    grad = torch.randn_like(keeping(x))
    recomputing(x)  # running statistics moved alike
    for op in (recomputing, keeping):
        calls.clear()
        _step(op, x, grad)
        assert len(calls) == 2, op.recompute
    _assert_same_step(recomputing, keeping, x)


def test_a_partial_backward_keeps_no_projected_values():
    """A backward that recomputes the local output for mode attention but never reaches the local attention
    (gradients of mode attention's parameters only) leaves no projected values behind for it."""
    recomputing, _ = _pair()
    x = torch.randn(2, 32, 6, 5, requires_grad=True)
    y = recomputing(x)
    torch.autograd.grad(y.square().sum(), [recomputing.mode.gate_norm.weight], retain_graph=True)
    stack, seen, holders = [y.grad_fn], set(), []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == '_LocalAttendBackward':
            holders.append(node.rows)
        stack.extend(n for n, _ in node.next_functions)
    assert len(holders) == 1 and holders[0].buffer is None
    y.square().sum().backward()  # and the full backward still works


@pytest.mark.parametrize('momentum', [None, 0.3])
def test_cumulative_and_custom_momentum(momentum):
    """``momentum=None`` averages with ``num_batches_tracked``: a second update would show in both."""
    recomputing, keeping = _pair()
    for op in (recomputing, keeping):
        for bn in (m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.momentum = momentum
    _assert_same_step(recomputing, keeping, torch.randn(3, 32, 6, 5))


def test_eval_mode_norms():
    """Fine-tuning with frozen statistics (eval mode, gradients on): the replay uses the running statistics."""
    recomputing, keeping = _pair()
    _assert_same_step(recomputing.eval(), keeping.eval(), torch.randn(2, 32, 6, 5))


def test_frozen_norms_are_not_replayed():
    """timm's FrozenBatchNorm2d is not a plain BatchNorm2d: the branches then run as usual, still correct."""
    recomputing, keeping = _pair()
    recomputing, keeping = freeze_batch_norm_2d(recomputing), freeze_batch_norm_2d(keeping)
    x = torch.randn(2, 32, 6, 5)
    assert not recomputing.local.score._replays(x)
    _assert_same_step(recomputing, keeping, x)


def test_retained_graph_backward_twice():
    recomputing, keeping = _pair()
    _assert_same_step(recomputing, keeping, torch.randn(2, 32, 6, 5), backwards=2)


def test_bfloat16_autocast_replays_in_bfloat16():
    recomputing, keeping = _pair()
    x = torch.randn(2, 32, 6, 5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = _step(recomputing, x, torch.ones(2, 32, 6, 5, dtype=torch.bfloat16))
        want = _step(keeping, x, torch.ones(2, 32, 6, 5, dtype=torch.bfloat16))
    assert got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], msg=name)


def _kept_bytes(op, x):
    x = x.clone().requires_grad_()
    y, _, kept = live_tensor_bytes(lambda: op(x))
    return kept - y.numel() * y.element_size()


def test_keeps_neither_the_local_output_nor_the_hidden_maps():
    B, C, H, W, G = 4, 64, 8, 8, 8
    recomputing, keeping = _pair(C, groups=G)
    x = torch.randn(B, C, H, W)
    kept, kept_keeping = _kept_bytes(recomputing, x), _kept_bytes(keeping, x)
    fp32_map = B * H * W * 4  # bytes of one channel over the batch
    local_output = C * fp32_map
    hidden = 2 * (C // 4) * fp32_map + 2 * 8 * G * fp32_map  # logit and mask branches: conv1 output and tanh
    assert kept_keeping - kept >= local_output + hidden
    # what is left: the attention weights (G * k*k channels), the masks and the modal vectors (a few per mode)
    assert kept <= (G * 9 + 8 * G) * fp32_map


def test_without_gradients_nothing_changes():
    recomputing, keeping = _pair()
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(recomputing(x), keeping(x))


class _CountingRecompute:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self):
        self.calls += 1
        return self.fn()


def test_recompute_saved_rebuilds_once_for_all_views():
    """Two ops save views of the tensor: one recomputation serves both; other tensors are saved as they are."""
    a = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(4, 3, requires_grad=True)
    t = a.detach() * 2  # the cheap tensor
    recompute = _CountingRecompute(lambda: a.detach() * 2)
    t.requires_grad_()
    with recompute_saved(t, recompute):
        y = (t[1:] @ w).sum() + (t.t()[:, :3] * t.t()[:, 3:]).sum()
    y.backward()
    assert recompute.calls == 1
    t_ = (a.detach() * 2).requires_grad_()
    w_ = w.detach().requires_grad_()
    ((t_[1:] @ w_).sum() + (t_.t()[:, :3] * t_.t()[:, 3:]).sum()).backward()
    torch.testing.assert_close(t.grad, t_.grad)
    torch.testing.assert_close(w.grad, w_.grad)


def test_score_branch_on_its_own():
    """The replayed branch also takes per-group nodes (the mask branch's input)."""
    torch.manual_seed(0)
    replaying = ScoreBranch(20, 8, 4, 4)
    plain = copy.deepcopy(replaying)
    plain.recompute = False
    positions_first = torch.randn(3, 4, 6, 5)  # B, G, N = 2 * 3, in / G: read as nodes through a transpose
    grads = []
    for branch in (replaying, plain):
        x = positions_first.clone().requires_grad_()
        y = branch(x.transpose(2, 3), (2, 3))
        y.square().sum().backward()
        grads.append((y, x.grad, [p.grad for p in branch.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    for a, b in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'nodes'])
def test_score_branch_recomputes_with_the_kept_branchs_kernels(layout, autocast, train):
    """The hand-written backward recomputes and differentiates with the kernels autograd takes for the kept branch,
    in the same dtypes: the same bits, in float32 and under bf16 autocast, for contiguous input (products),
    channels-last input (the grouped convolutions, as eager CUDA takes them) and per-group nodes; in eval mode with
    the norms' running statistics. (Statistics from another kernel once shifted the float16 gradients on CUDA.)"""
    from timm_stra.layers import grouped_pointwise as gp
    torch.manual_seed(0)
    replaying = ScoreBranch(24, 16, 8, 4).train(train)
    for bn in (replaying.bn1, replaying.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    plain = copy.deepcopy(replaying)
    plain.recompute = False
    x = torch.randn(3, 24, 5, 4)
    if layout == 'channels_last':
        x = x.to(memory_format=torch.channels_last)
    assert gp._use_matmul(x) == (layout != 'channels_last')
    steps = []
    for branch in (replaying, plain):
        x_ = x.clone(memory_format=torch.preserve_format).requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            y = branch(x_.view(3, 4, 6, 20), (5, 4)) if layout == 'nodes' else branch(x_)
        y.float().mul(torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        steps.append([y.detach(), x_.grad, *(p.grad for p in branch.parameters())])
    assert steps[0][0].dtype == (torch.bfloat16 if autocast else torch.float32)
    for i, (got, want) in enumerate(zip(*steps)):
        assert torch.equal(got, want), i


def test_replay_follows_the_forwards_autocast_not_the_backwards():
    """A float32 forward, then backward called inside an autocast region: the replay stays float32."""
    recomputing, keeping = _pair()
    x = torch.randn(2, 32, 6, 5)
    grad = torch.randn(2, 32, 6, 5)
    got, want = [], []
    for op, out in ((recomputing, got), (keeping, want)):
        x_ = x.clone().requires_grad_()
        y = op(x_)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y.backward(grad)
        out.extend([x_.grad, *(p.grad for p in op.parameters())])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_a_forward_without_backward_is_freed():
    """Tensors the hooks pass through must not close a reference cycle (an op keeping its own output)."""
    import gc
    import weakref
    a = torch.randn(4, 4, requires_grad=True)
    t = a.detach() * 2
    with recompute_saved(t, lambda: a.detach() * 2):
        y = (a + 1).exp()  # exp keeps its output
    ref = weakref.ref(y)
    del y
    gc.collect()
    assert ref() is None


def test_under_non_reentrant_checkpointing_the_checkpoint_decides():
    """Inside torch.utils.checkpoint (timm's set_grad_checkpointing) our hooks would replace the checkpoint's."""
    from torch.utils.checkpoint import checkpoint
    recomputing, keeping = _pair()
    x = torch.randn(2, 32, 6, 5)
    kept = []
    for op in (recomputing, keeping):
        x_ = x.clone().requires_grad_()
        y, _, live = live_tensor_bytes(lambda: checkpoint(op, x_, use_reentrant=False))
        kept.append(live - y.numel() * y.element_size())
        y.square().sum().backward()
        kept.append(x_.grad)
    assert kept[0] <= kept[2] + 1024  # the checkpoint keeps as little either way
    torch.testing.assert_close(kept[1], kept[3])


def test_functional_call_parameters_reach_the_replay():
    """``torch.func.functional_call`` swaps parameters for the forward only: the replay must use the same ones."""
    recomputing, keeping = _pair()
    x = torch.randn(2, 32, 6, 5)
    grads = []
    for op in (recomputing, keeping):
        params = {n: p.detach().clone().requires_grad_() for n, p in op.named_parameters()}
        torch.func.functional_call(op, params, (x,)).square().sum().backward()
        assert all(p.grad is None for p in op.parameters())
        grads.append(params)
    for name, p in grads[1].items():
        torch.testing.assert_close(grads[0][name].grad, p.grad, msg=name)


def test_eval_between_forward_and_backward():
    """The replay normalises as the forward did (batch statistics), whatever mode the module is in by then."""
    recomputing, keeping = _pair()
    x = torch.randn(2, 32, 6, 5)
    grads = []
    for op in (recomputing, keeping):
        x_ = x.clone().requires_grad_()
        y = op(x_)
        op.eval()
        y.square().sum().backward()
        grads.append(x_.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_input_modified_in_place_before_backward_is_an_error():
    recomputing, _ = _pair()
    recomputing.local.requires_grad_(False)  # nothing then keeps the input for the local output's own backward
    x = torch.randn(2, 32, 6, 5)
    y = recomputing(x)
    x.mul_(3)
    with pytest.raises(RuntimeError, match='modified in place'):
        y.square().sum().backward()


def test_parameters_changed_in_place_before_backward_are_an_error():
    """The hand-written backward passes read the parameters again: changed in place between forward and backward
    (an optimizer step before the backward of a retained graph), they must raise as autograd does, not give the
    gradient of other weights."""
    recomputing, _ = _pair()
    for param in (recomputing.mode.gate_norm.weight, recomputing.mode.interact_norm.bias,
                  recomputing.local.score.bn1.weight, recomputing.mode.mask.conv2.weight):
        y = recomputing(torch.randn(2, 32, 6, 5, requires_grad=True))
        with torch.no_grad():
            param.mul_(1.5)
        with pytest.raises(RuntimeError, match='modified by an inplace operation'):
            y.square().sum().backward()


def test_layers_with_forward_hooks_take_the_autograd_path():
    """A forward hook changes what a layer gives; the hand-written backward passes would not see it, so a hooked
    norm or convolution sends its branch (or the gates) down the plain autograd path: the gradients of what the
    hooks made."""
    recomputing, keeping = _pair()
    for op in (recomputing, keeping):
        op.mode.gate_norm.register_forward_hook(lambda m, i, out: out * 2)
        op.local.score.bn1.register_forward_hook(lambda m, i, out: out * 2)
        op.mode.mask.conv1.register_forward_pre_hook(lambda m, i: (i[0] * 0.5,))
    x = torch.randn(2, 32, 6, 5)
    assert not recomputing.mode._gates_in_one_node(x)
    assert not recomputing.local.score._replays(x) and not recomputing.mode.mask._replays(x)
    _assert_same_step(recomputing, keeping, x)


def test_norm_backward_reads_its_input_densely(monkeypatch):
    """cuDNN's batch-norm backward (CUDA) requires its input contiguous in its suggested layout, as its forward made
    it; mode attention's first gate norm reads a strided view of the affinities: the replay hands over a dense one."""
    seen = []
    batch_norm_backward = torch.ops.aten._batch_norm_impl_index_backward

    def spy(impl, x, *args):
        seen.append(x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
        return batch_norm_backward(impl, x, *args)

    monkeypatch.setattr(torch.ops.aten, '_batch_norm_impl_index_backward', spy)
    recomputing, _ = _pair()
    recomputing(torch.randn(2, 32, 6, 5, requires_grad=True)).square().sum().backward()
    assert len(seen) == 6 and all(seen)  # two gate norms, two norms in each of the two score branches


def test_recompute_saved_keeps_autograds_in_place_check_for_the_other_tensors():
    a = torch.randn(4, 4, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)
    t = a.detach() * 2
    with recompute_saved(t, lambda: a.detach() * 2):
        y = (t @ w).sum() + (a * w).sum()  # keeps t (a handle), w and a
    with torch.no_grad():
        w.add_(1)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        y.backward()
