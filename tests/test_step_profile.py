"""The step profiler: one table of totals, one of top operators per case (and of top kernels on CUDA)."""
import pytest
import torch

from timm_stra.benchmarks.step_profile import main, profile_case


def test_profile_finds_the_operators_of_stra_and_not_of_the_limit():
    stra = profile_case('stra', 'fer', 'train', 2, torch.device('cpu'), steps=1, top=500)
    limit = profile_case('limit', 'fer', 'train', 2, torch.device('cpu'), steps=1, top=500)
    names = {r['operator'] for r in stra['top']}
    assert 'aten::bmm' in names and 'aten::convolution_backward' in names
    assert 'aten::bmm' not in {r['operator'] for r in limit['top']}  # the limit's last stage has no attention
    assert stra['aten calls/step'] > limit['aten calls/step'] > 0
    assert stra['ms/step (self, total)'] > 0 and stra['kernels/step'] is None  # no kernels on the CPU
    assert stra['top kernels'] == []


def test_main_prints_tables(capsys):
    assert main(['--task', 'fer', '--batch-size', '2', '--steps', '1', '--top', '3', '--cases', 'stra',
                 '--device', 'cpu']) == 0  # (CUDA by default)
    out = capsys.readouterr().out
    assert '| case | ms/step (self, total) | aten calls/step |' in out and 'StRA (local + mode):' in out


@pytest.mark.parametrize('argv, message', [
    (['--cases', 'fast'], "argument --cases: ['fast']: choose from twin, stra"),
    (['--cases', 'stra,stra'], 'argument --cases: stra given more than once'),
    (['--batch-size', '1'], 'a training step needs a batch of 2 or more'),
])
def test_bad_arguments_exit(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_kernel_time_is_counted_once():
    """Each kernel's time belongs to the operator that launched it: the operators' rows add up to the kernels'
    total, not to twice it."""
    result = profile_case('stra', 'fer', 'train', 2, torch.device('cuda'), steps=1, top=100000)
    rows_ms = sum(r['ms/step'] for r in result['top'])
    assert result['kernels/step'] > 0
    assert rows_ms == pytest.approx(result['ms/step (self, total)'], rel=0.05)
    kernels = result['top kernels']  # CUDA kernels, not the aten operators that launched them, slowest first
    assert kernels and not any(r['kernel'].startswith('aten::') for r in kernels)
    assert [r['ms/step'] for r in kernels] == sorted((r['ms/step'] for r in kernels), reverse=True)
    assert sum(r['calls/step'] for r in kernels) == pytest.approx(result['kernels/step'])


def test_compiled_profile(capsys, compiled_eagerly):
    """``--compile`` profiles the compiled model and says so. Dynamo traces for real; the eager backend stands in
    for inductor's code generation (minutes on 2 cores)."""
    assert main(['--task', 'fer', '--batch-size', '2', '--steps', '1', '--top', '3', '--cases', 'stra',
                 '--compile', 'reduce-overhead', '--device', 'cpu']) == 0
    out = capsys.readouterr().out
    assert [mode for _, mode in compiled_eagerly] == ['reduce-overhead']
    assert 'torch.compile mode=reduce-overhead' in out and 'StRA (local + mode):' in out
