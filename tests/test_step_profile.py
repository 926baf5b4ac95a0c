"""The step profiler: one table of totals, one of top operators per case."""
import pytest
import torch

from timm_stra.benchmarks.step_profile import main, profile_case


def test_profile_finds_the_operators_of_stra_and_not_of_the_limit():
    stra = profile_case('stra', 'fer', 'train', 2, torch.device('cpu'), steps=1, top=500)
    limit = profile_case('limit', 'fer', 'train', 2, torch.device('cpu'), steps=1, top=500)
    names = {r['operator'] for r in stra['top']}
    assert 'aten::bmm' in names and 'aten::convolution_backward' in names
    assert 'aten::bmm' not in {r['operator'] for r in limit['top']}  # the limit's last stage has no attention
    assert stra['operator calls/step'] > limit['operator calls/step'] > 0
    assert stra['ms/step (self, total)'] > 0 and stra['kernels/step'] is None  # no kernels on the CPU


def test_main_prints_tables(capsys):
    assert main(['--task', 'fer', '--batch-size', '2', '--steps', '1', '--top', '3', '--cases', 'stra']) == 0
    out = capsys.readouterr().out
    assert '| case | ms/step (self, total) | operator calls/step |' in out and 'StRA (local + mode):' in out


@pytest.mark.parametrize('argv', [['--cases', 'fast'], ['--batch-size', '1']])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        main(argv)
