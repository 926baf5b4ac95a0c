"""The interleaved whole-network benchmark: its schedule, its ratios, and a tiny real run."""
import gc
import json
import mmap
from collections import Counter

import pytest
import torch

from timm_stra.benchmarks.interleaved import main, summarize, time_interleaved
from timm_stra.benchmarks.orders import round_orders
from timm_stra.benchmarks.page_faults import minor_page_faults


@pytest.mark.parametrize('n', [2, 3, 4, 5])
def test_round_orders_are_a_balanced_latin_square(n):
    cases = [f'c{i}' for i in range(n)]
    orders = round_orders(cases)
    assert len(orders) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(order) == cases for order in orders)
    per_position = len(orders) // n
    for position in range(n):  # every case in every position equally often
        assert Counter(order[position] for order in orders) == {c: per_position for c in cases}
    follows = Counter((a, b) for order in orders for a, b in zip(order, order[1:]))
    assert follows == {(a, b): len(orders) // n for a in cases for b in cases if a != b}  # each pair alike


def test_rounds_run_the_orders_in_turn_after_the_warm_up():
    calls = []
    steps = {case: (lambda case=case: calls.append(case)) for case in ('a', 'b')}
    ticks = []
    times = time_interleaved(steps, rounds=3, warmup=1, device=torch.device('cpu'), tick=ticks.append)
    assert calls == ['a', 'b',  # warm-up
                     'a', 'b', 'b', 'a', 'a', 'b']
    assert ticks == calls[2:]
    assert {case: len(t) for case, t in times.items()} == {'a': 3, 'b': 3}


@pytest.mark.parametrize('enabled', [True, False])
def test_garbage_collector_state_is_restored_even_when_a_step_fails(enabled):
    def fail():
        assert not gc.isenabled()  # off while timing
        raise RuntimeError('step failed')
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with pytest.raises(RuntimeError, match='step failed'):
            time_interleaved({'a': fail}, rounds=1, warmup=0, device=torch.device('cpu'))
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_ratios_are_medians_of_per_round_ratios():
    """Not the ratio of the medians (1.3 / 1.2 here) nor of sorted lists: round by round, 1.3, 0.833, 1.0."""
    times = {'stra': [1.3, 1.0, 3.0], 'limit': [1.0, 1.2, 3.0], 'reference': [2.6, 1.5, 3.3]}
    rows = {r['case']: r for r in summarize(times, 'train', 16)}
    stra, ref = rows['StRA (local + mode)'], rows['StRA, unfold reference']
    assert stra['time vs limit'] == '1.000x'
    assert stra['IQR vs limit'] == f'{(1.0 / 1.2 + 1.0) / 2:.2f}-{(1.0 + 1.3) / 2:.2f}'  # quartiles within the data
    assert stra['time vs StRA'] == '1.000x' and stra['IQR vs StRA'] == '1.00-1.00'
    assert ref['time vs StRA'] == '1.500x'  # 2.0, 1.5, 1.1
    assert stra['rounds'] == 3 and stra['ms/step (median)'] == '1300.0' and stra['images/s'] == f'{16 / 1.3:.2f}'
    assert stra['95% CI vs limit'] == '-'  # 3 rounds: too few for a 95% interval


def test_the_median_ratio_comes_with_its_confidence_interval():
    limit = [1.0] * 6
    stra = [1.01, 1.05, 1.02, 0.99, 1.10, 1.03]
    rows = {r['case']: r for r in summarize({'stra': stra, 'limit': limit}, 'infer', 16)}
    assert rows['StRA (local + mode)']['95% CI vs limit'] == '0.990-1.100'  # 6 rounds: the smallest and largest
    assert rows['limit (twin, last-stage 3x3 = identity)']['95% CI vs limit'] == '1.000-1.000'


@pytest.mark.skipif(minor_page_faults() is None, reason='no getrusage on this platform')
def test_page_faults_are_counted_step_by_step():
    size = 8 * 2 ** 20

    def touch_fresh_pages():
        with mmap.mmap(-1, size) as m:  # fresh shared memory, not the allocator's: each page faults when written
            for offset in range(0, size, mmap.PAGESIZE):
                m[offset] = 1

    faults = {}
    time_interleaved({'touch': touch_fresh_pages, 'idle': lambda: None}, rounds=2, warmup=1,
                     device=torch.device('cpu'), faults=faults)
    pages = size // mmap.PAGESIZE
    assert len(faults['touch']) == len(faults['idle']) == 2
    assert min(faults['touch']) >= pages and max(faults['idle']) < pages // 4
    rows = {r['case']: r for r in summarize({'stra': [1.0], 'limit': [1.0]}, 'infer', 1,
                                            {'stra': [pages], 'limit': [0]})}
    assert rows['StRA (local + mode)']['page faults/step'] == f'{pages:,}'
    assert rows['limit (twin, last-stage 3x3 = identity)']['page faults/step'] == '0'


def test_without_the_limit_or_stra_there_are_no_ratio_columns():
    (row,) = summarize({'twin': [1.0, 2.0]}, 'infer', 2)
    assert not [k for k in row if k.startswith(('time vs', 'IQR'))]


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs CUDA'))])
def test_tiny_run_prints_a_table_and_writes_every_step(device, tmp_path, capsys):
    out = tmp_path / 'steps.json'
    assert main(['--task', 'fer', '--cases', 'stra,limit', '--modes', 'train,infer', '--batch-sizes', '2',
                 '--rounds', '2', '--warmup', '1', '--device', device, '--no-progress', '--log-runs',
                 '--json', str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert captured.err.count('StRA (local + mode)') == 2  # one line per setting as it finished
    assert '| train | 2 | StRA (local + mode) | 2 |' in text and '| infer | 2 | limit' in text
    assert '95% CI vs limit' in text and 'CPU allocator ' in text
    assert 'the most its "time vs StRA" can be' not in text  # said only where the reference runs
    counted = minor_page_faults() is not None
    assert ('page faults/step' in text) == counted
    data = json.loads(out.read_text())
    assert list(data) == ['machine', 'settings', 'wall_s', 'rows', 'raw']
    assert data['settings']['rounds'] == 2 and 'json' not in data['settings'] and data['wall_s'] > 0
    assert [(r['mode'], r['batch']) for r in data['raw']] == [('train', 2), ('infer', 2)]
    assert data['raw'][0]['orders'] == [['stra', 'limit'], ['limit', 'stra']]
    for r in data['raw']:
        assert {case: len(s) for case, s in r['seconds'].items()} == {'stra': 2, 'limit': 2}
        assert all(t > 0 for s in r['seconds'].values() for t in s)
        if counted:
            assert {case: len(f) for case, f in r['minor_page_faults'].items()} == {'stra': 2, 'limit': 2}
        else:
            assert r['minor_page_faults'] is None


@pytest.mark.parametrize('task', ['face', 'fer'])
def test_with_the_reference_the_legend_bounds_its_ratio_to_stra(capsys, task):
    """Where StRA's blocks are the limit's plus its operators: not FER's, which also drop the last 1x1 conv."""
    assert main(['--task', task, '--cases', 'stra,limit,reference', '--modes', 'infer', '--batch-sizes', '1',
                 '--rounds', '1', '--warmup', '0', '--no-progress']) == 0
    text = capsys.readouterr().out
    bound = 'the reference\'s "time vs limit" is about the most its "time vs StRA" can be' in text
    assert bound == (task != 'fer')
    assert '| infer | 1 | StRA, unfold reference | 1 |' in text


@pytest.mark.parametrize('argv, message', [
    (['--rounds', '0'], 'argument --rounds: expected 1 or more, got 0'),
    (['--warmup', '-1'], 'argument --warmup: expected 0 or more, got -1'),
    (['--modes', 'train', '--batch-sizes', '1'], 'nothing to measure (a training step needs a batch of 2 or more'),
    (['--cases', 'fast'], "argument --cases: ['fast']: choose from"),
    (['--cases', 'stra,limit,stra'], 'stra given more than once'),
    (['--compile', '--warmup', '0'], '--compile default needs --warmup 1 or more'),
])
def test_bad_arguments_exit(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ['--no-progress'])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
