"""The operator benchmark's machinery: shapes read from the models, exact saved memory, table structure."""
import statistics

import pytest
import torch

from timm_stra.benchmarks.operator import _step, build_ops, main, measure, saved_mib, stage_shapes


@pytest.mark.parametrize('task,shapes', [
    ('reid', [(512, 16, 8, 1)] * 3),                                     # last stride 1: 16x8 map
    ('face', [(512, 7, 7, 2), (512, 4, 4, 1), (512, 4, 4, 1)]),         # 112 / 16 = 7, then 4x4
    ('fer', [(512, 11, 11, 2), (512, 6, 6, 1), (512, 6, 6, 1)]),        # small stem: 44 / 4 = 11
])
def test_stage_shapes_are_those_of_the_network(task, shapes):
    assert stage_shapes(task) == shapes


@pytest.mark.parametrize('device', ['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
def test_saved_memory_is_exact_for_a_conv(device):
    """A 3x3 conv saves its input (excluded: the caller holds it) and nothing else; a ReLU and a 1x1 conv after
    it keep one (B, C, H, W) map between them (the ReLU's output: its own backward and the 1x1 conv's need it);
    the final output is the next layer's, not counted. CUDA counts allocator blocks of 512 bytes."""
    x = torch.randn(2, 8, 5, 5, device=device, requires_grad=True)
    conv = build_ops('conv3x3', [(8, 5, 5, 1)], device)
    saved_mib(conv, [x])  # warm-up: library workspaces are allocated once, at the first call
    assert saved_mib(conv, [x]) == 0
    deeper = torch.nn.ModuleList([torch.nn.Sequential(conv[0], torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1))]).to(device)
    saved_mib(deeper, [x])
    map_bytes = 2 * 8 * 5 * 5 * 4
    if device == 'cuda':
        map_bytes = -(-map_bytes // 512) * 512
    assert saved_mib(deeper, [x]) == pytest.approx(map_bytes / 2 ** 20)


def test_reference_keeps_more_for_backward_than_ours():
    """The unfold reference keeps k*k copies of the values; ours recomputes them."""
    shapes = [(64, 8, 6, 1)]
    x = [torch.randn(2, 64, 8, 6, requires_grad=True)]
    ours, ref = saved_mib(build_ops('stra', shapes), x), saved_mib(build_ops('reference', shapes), x)
    assert ref > ours + 9 * 2 * 64 * 8 * 6 * 4 / 2 ** 20 * 0.9


def test_the_ratio_to_stra_is_taken_within_each_round():
    """A slow round slows every implementation in it: the per-round ratio leaves it out, a ratio of medians does
    not (here 1.10x against 1.30x)."""
    from timm_stra.benchmarks.operator import per_round_ratio
    assert per_round_ratio([1.1, 2.2, 1.1], [1.0, 2.0, 1.0]) == pytest.approx(1.1)
    assert per_round_ratio([1.0, 2.2, 1.3], [1.0, 2.0, 1.0]) == pytest.approx(1.1)
    assert statistics.median([1.0, 2.2, 1.3]) / statistics.median([1.0, 2.0, 1.0]) == pytest.approx(1.3)
    with pytest.raises(ValueError):  # rounds that do not pair up are a bug, not a number
        per_round_ratio([1.0, 2.0], [1.0])


def test_tiny_run_prints_a_table(capsys):
    rows = measure('fer', 2, repeats=1, iters=1, warmup=0, progress=False)
    assert [(r['mode'], r['operators']) for r in rows] == [
        (m, i) for m in ('infer', 'train') for i in ('stra', 'stra-keep', 'reference', 'conv3x3')]
    assert all(r['ms per stage (median)'] > 0 for r in rows)
    assert [r['vs stra'] for r in rows if r['operators'] == 'stra'] == ['1.00x', '1.00x']
    assert main(['--task', 'fer', '--batch-size', '2', '--repeats', '1', '--iters', '1', '--modes', 'infer',
                 '--impls', 'stra,conv3x3', '--no-progress', '--device', 'cpu']) == 0  # (CUDA by default)
    out = capsys.readouterr().out
    assert '| infer | conv3x3 |' in out and '(512, 11, 11, 2)' in out


def test_saved_memory_is_of_a_training_forward_whatever_the_order_of_the_modes():
    """Timing inference last leaves the operators in eval mode, where nothing is kept for backward."""
    def saved(modes):
        rows = measure('fer', 2, impls=('stra',), modes=modes, repeats=1, iters=1, warmup=0, progress=False)
        return [r['saved MiB'] for r in rows if r['mode'] == 'train']
    assert saved(('train', 'infer')) == saved(('train',)) and saved(('train',))[0] > 0


@pytest.mark.parametrize('argv, message', [
    (['--impls', 'fast'], "argument --impls: ['fast']: choose from"),
    (['--modes', 'train', '--batch-size', '1'], 'a training step needs a batch of 2 or more'),
    (['--repeats', '0'], 'argument --repeats: expected 1 or more, got 0'),
    (['--iters', '0'], 'argument --iters: expected 1 or more, got 0'),
])
def test_bad_arguments_exit(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ['--no-progress'])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_channels_last_bf16_run(capsys):
    assert main(['--task', 'fer', '--batch-size', '2', '--repeats', '1', '--iters', '1', '--impls', 'stra,conv3x3',
                 '--channels-last', '--bf16', '--no-progress', '--device', 'cpu']) == 0
    out = capsys.readouterr().out
    assert 'channels_last, bf16 autocast' in out and '| train | stra |' in out


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error where there is no CUDA')
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(['--device', 'cuda', '--no-progress'])
    assert 'CUDA is not available' in capsys.readouterr().err


def test_compile_run(capsys, compiled_eagerly):
    """``--compile`` compiles every operator of every implementation in place, in the first warm-up step, and says
    so (``compiled_eagerly``: dynamo traces, no code generation)."""
    argv = ['--task', 'fer', '--batch-size', '2', '--repeats', '1', '--iters', '1', '--warmup', '2', '--impls',
            'stra,conv3x3', '--compile', 'reduce-overhead', '--modes', 'train', '--no-progress',  # (half the cost)
            '--device', 'cpu']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert compiled_eagerly == [('StRAttention', 'reduce-overhead')] * 3 + [('Conv2d', 'reduce-overhead')] * 3
    assert 'torch.compile mode=reduce-overhead' in out and '| train | stra |' in out
    with pytest.raises(SystemExit):
        main(['--task', 'fer', '--warmup', '0', '--compile', '--no-progress'])  # the compiling step would be timed
    assert '--warmup 1 or more' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # and with CUDA graphs, the step that records them
        main(['--task', 'fer', '--warmup', '1', '--compile', 'reduce-overhead', '--no-progress'])
    assert '--warmup 2 or more' in capsys.readouterr().err


def test_training_step_clears_the_gradients_first():
    """Each training step starts from no gradients, as after ``zero_grad(set_to_none=True)``: a gradient left in a
    CUDA graph's memory must not be accumulated into."""
    ops = build_ops('stra', [(16, 5, 4, 1)])
    x = torch.randn(2, 16, 5, 4, requires_grad=True)
    grads = [torch.randn(2, 16, 5, 4)]
    _step(ops, [x], 'train', grads)
    once = (x.grad.clone(), [p.grad.clone() for p in ops.parameters()])
    _step(ops, [x], 'train', grads)
    torch.testing.assert_close(x.grad, once[0])
    torch.testing.assert_close([p.grad for p in ops.parameters()], once[1])
