"""The interleaved whole-network benchmark: its schedule, its ratios, and a tiny real run."""
import json

import pytest
import torch

from timm_stra.benchmarks.interleaved import main, summarize, time_interleaved


def test_rounds_alternate_the_cases_in_rotated_order():
    calls = []
    steps = {case: (lambda case=case: calls.append(case)) for case in ('a', 'b', 'c')}
    ticks = []
    times = time_interleaved(steps, rounds=3, warmup=1, device=torch.device('cpu'), tick=ticks.append)
    assert calls == ['a', 'b', 'c',  # warm-up
                     'a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b']
    assert ticks == calls[3:]
    assert {case: len(t) for case, t in times.items()} == {'a': 3, 'b': 3, 'c': 3}


def test_ratios_are_taken_within_each_round():
    """A machine twice as slow in round 2 moves both cases: the per-round ratio stays 1.1."""
    times = {'stra': [1.1, 2.2, 1.1, 1.1], 'limit': [1.0, 2.0, 1.0, 1.0], 'reference': [1.5, 3.0, 1.5, 1.5]}
    rows = {r['case']: r for r in summarize(times, 'train', 16)}
    stra, ref = rows['StRA (local + mode)'], rows['StRA, unfold reference']
    assert stra['time vs limit'] == '1.100x' and stra['IQR vs limit'] == '1.10-1.10'
    assert stra['time vs StRA'] == '1.000x'
    assert ref['time vs StRA'] == f'{1.5 / 1.1:.3f}x'
    assert stra['rounds'] == 4 and stra['ms/step (median)'] == '1100.0'


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs CUDA'))])
def test_tiny_run_prints_a_table_and_writes_every_step(device, tmp_path, capsys):
    out = tmp_path / 'steps.json'
    assert main(['--task', 'fer', '--cases', 'stra,limit', '--modes', 'train,infer', '--batch-sizes', '2',
                 '--rounds', '2', '--warmup', '1', '--device', device, '--no-progress', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert '| train | 2 | StRA (local + mode) | 2 |' in text and '| infer | 2 | limit' in text
    data = json.loads(out.read_text())
    assert [(r['mode'], r['batch']) for r in data['raw']] == [('train', 2), ('infer', 2)]
    for r in data['raw']:
        assert {case: len(s) for case, s in r['seconds'].items()} == {'stra': 2, 'limit': 2}
        assert all(t > 0 for s in r['seconds'].values() for t in s)


@pytest.mark.parametrize('argv', [['--rounds', '0'], ['--modes', 'train', '--batch-sizes', '1'],
                                  ['--cases', 'fast'], ['--compile', '--warmup', '0']])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        main(argv + ['--no-progress'])
