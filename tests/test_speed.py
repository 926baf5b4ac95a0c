"""The speed benchmark's machinery on a tiny configuration: structure of the output, not timings."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

import timm_stra  # noqa: F401
from timm_stra.benchmarks.cases import CASES, StridedIdentity, build_case
from timm_stra.benchmarks.page_faults import minor_page_faults
from timm_stra.benchmarks.speed import main, plan, scaled_size


def test_scaled_size():
    assert scaled_size((256, 128), 1) == (256, 128)
    assert scaled_size((256, 128), 4) == (512, 256)
    h, w = scaled_size((256, 128), 2)
    assert h % 8 == 0 and w % 8 == 0 and 1.9 < h * w / (256 * 128) < 2.1


def test_plan_skips_training_at_batch_1_and_reuses_the_1x_setting():
    settings = plan(['infer', 'train'], [1, 4], (44, 44), [1, 4], sweep_batch=1)
    assert settings == [('infer', 1, (44, 44)), ('infer', 4, (44, 44)), ('train', 4, (44, 44)),
                        ('infer', 1, (88, 88))]


@pytest.mark.parametrize('task,size', [('reid', (256, 128)), ('face', (112, 112)), ('fer', (44, 44))])
def test_limit_is_the_twin_without_last_stage_3x3(task, size):
    twin, limit = build_case('twin', task, size).eval(), build_case('limit', task, size).eval()
    assert not any(isinstance(b.conv2, torch.nn.Conv2d) for b in limit.layer4)
    assert isinstance(limit.layer4[0].conv2, StridedIdentity) == (task != 'reid')
    removed = sum(b.conv2.weight.numel() for b in twin.layer4)
    assert sum(p.numel() for p in twin.parameters()) - sum(p.numel() for p in limit.parameters()) == removed
    x = torch.randn(1, 1 if task == 'fer' else 3, *size)
    with torch.no_grad():
        assert limit.forward_features(x).shape == twin.forward_features(x).shape


def test_bad_case_is_a_clear_error():
    with pytest.raises(ValueError, match='case'):
        build_case('fast', 'reid')


def test_peak_memory_sees_tensors():
    """In a fresh process (as the benchmark measures), a 64 MiB tensor shows in the peak."""
    code = ('import torch; from timm_stra.benchmarks.memory import PeakMemory; '
            "memory = PeakMemory(torch.device('cpu')); base = memory.reset(); "
            'x = torch.ones(64 * 2 ** 20 // 4); print(memory.peak() - base)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert float(out) > 60


def test_peak_memory_is_of_the_timed_steps_not_the_warm_up():
    """A first step that touches 256 MiB (as a compiling one may) does not count in the timed steps' peak."""
    code = ('import torch; from timm_stra.benchmarks import worker\n'
            'calls = []\n'
            'def build_step(m):\n'
            '    def step():\n'
            '        if not calls:\n'
            '            torch.ones(256 * 2 ** 20 // 4).sum()\n'
            '        calls.append(1)\n'
            '    return step\n'
            'worker.build_step = build_step\n'
            "r = worker.run(worker.Measurement(case='stra', task='fer', mode='infer', batch=1, img_size=(44, 44), "
            "device='cpu', warmup=1, iters=2))\n"
            "print(r['peak_mb'] - r['base_mb'], len(calls))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) < 100 and out[1] == '3'


@pytest.mark.parametrize('argv, message', [
    (['--batch-sizes', '0'], "argument --batch-sizes: expected positive integers, got '0'"),
    (['--cases', 'fast'], "argument --cases: ['fast']: choose from"),
    (['--sweep', 'x'], "argument --sweep: expected comma-separated numbers, got 'x'"),
    (['--modes', 'train', '--batch-sizes', '1', '--no-sweep'], 'nothing to measure at the fer input size'),
    (['--compile', '--warmup', '0', '--no-sweep'], '--compile default needs --warmup 1 or more'),  # (untimed)
    (['--compile', 'reduce-overhead', '--warmup', '1', '--no-sweep'],  # the second step records CUDA graphs
     '--compile reduce-overhead needs --warmup 2 or more'),
])
def test_bad_arguments_exit(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ['--task', 'fer', '--no-progress'])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_tiny_run(tmp_path, capsys):
    path = tmp_path / 'bench.json'
    argv = ['--task', 'fer', '--cases', 'twin,limit', '--modes', 'infer', '--batch-sizes', '1', '--repeats', '1',
            '--warmup', '0', '--iters', '1', '--sweep', '1,2', '--no-progress', '--json', str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'Machine:' in out and 'torch threads' in out and 'Resolution sweep' in out
    result = json.loads(path.read_text())
    assert result['machine']['device'] == 'cpu' and result['machine']['threads_used'] >= 1
    assert result['settings']['task'] == 'fer' and 'json' not in result['settings'] and result['wall_s'] > 0
    assert len(result['raw']) == 4  # 2 cases x (44x44, 64x64)
    rows = {(r['case'], tuple(r['img_size'])): r for r in result['summary']}
    assert set(rows) == {('twin', (44, 44)), ('limit', (44, 44)), ('twin', (64, 64)), ('limit', (64, 64))}
    for (case, _), r in rows.items():
        assert 0 < r['images_per_s'] <= r['best_images_per_s']
        assert r['peak_mb'] > 0 and r['step_mb'] >= 0
        if case == 'twin':
            assert r['speed_vs_twin'] == 1.0 and r['peak_vs_twin'] == 1.0
        assert r['time_vs_stra'] is None  # no StRA case in this run
        limit = rows['limit', tuple(r['img_size'])]
        assert r['time_vs_limit'] == pytest.approx(r['seconds'] / limit['seconds'])  # 1 round
    assert rows['limit', (44, 44)]['time_vs_limit'] == 1.0
    assert '| time vs limit | time vs StRA |' in out
    counted = minor_page_faults() is not None
    assert ('| page faults/step |' in out and '"page faults/step"' in out) == counted  # on the CPU: column, legend
    assert all((r['page_faults'] is not None) == counted for r in result['raw'])
    faults = {(r['case'], tuple(r['img_size'])): r['page_faults'] for r in result['raw']}
    assert {key: r['page_faults'] for key, r in rows.items()} == faults  # one repeat: its step's count


def test_tensor_memory_sees_the_activations():
    """The replayed allocation events see the activations: a model with one more layer holds about its output
    more (the exact count is ``test_tensor_memory_peak_of_a_step_worked_out_by_hand``)."""
    from timm_stra.benchmarks.tensor_memory import step_peak_mib
    small = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU())
    big = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU())
    x = torch.randn(4, 1, 64, 64)
    extra_map = 4 * 8 * 60 * 60 * 4 / 2 ** 20  # the second conv's (4, 8, 60, 60) output, kept for ReLU's backward
    assert 0.8 * extra_map < step_peak_mib(big, x) - step_peak_mib(small, x) < 4 * extra_map


def test_repeats_follow_the_balanced_orders():
    """Each repeat runs every setting with every case, the cases in that round's row of the Latin square: over a
    cycle every case follows every other equally often (a rotation would keep each case's predecessor)."""
    from collections import Counter
    from timm_stra.benchmarks.speed import schedule
    settings = [('infer', 2, (8, 8)), ('train', 2, (8, 8))]
    jobs = schedule(['a', 'b', 'c', 'd'], settings, repeats=4)
    assert len(jobs) == 4 * 2 * 4
    follows = Counter()
    for r in range(4):
        for setting in settings:
            order = [c for rr, s, c in jobs if rr == r and s == setting]
            assert sorted(order) == ['a', 'b', 'c', 'd']
            follows.update(zip(order, order[1:]))
    assert set(follows.values()) == {2}  # 12 ordered pairs, each twice (once per setting)


def test_paired_ratios_are_taken_within_each_round():
    """A slow round slows every case in it: the per-round ratio ignores it, the ratio of medians would not."""
    from timm_stra.benchmarks.speed_summary import paired_ratios
    runs = [{'repeat': r, 'seconds': s} for r, s in enumerate([1.0, 2.2, 1.1])]
    base = [{'repeat': r, 'seconds': s} for r, s in enumerate([1.0, 2.0, 1.0])]
    assert paired_ratios(runs, base) == pytest.approx([1.0, 1.1, 1.1])
    assert paired_ratios(runs, base[:1]) == [1.0] and paired_ratios(runs, []) == []


def test_time_ratios_get_their_interval_from_six_rounds_on():
    """The sign-test interval of the per-round ratios (it was worked out by hand for the README)."""
    from timm_stra.benchmarks.speed_summary import main_table, summarize

    def runs(case, seconds):
        return [dict(mode='train', batch=2, img_size=[44, 44], case=case, repeat=r, seconds=t, cpu_seconds=t,
                     all_seconds=[t], peak_mb=100., base_mb=50., page_faults=None, threads_used=2)
                for r, t in enumerate(seconds)]
    limit = [1.0] * 8
    stra = [1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07, 1.30]
    rows = {r['case']: r for r in summarize(runs('limit', limit) + runs('stra', stra))}
    assert rows['stra']['time_vs_limit'] == pytest.approx(1.045)
    assert rows['stra']['time_vs_limit_interval'] == (1.01, 1.30)  # n = 8: the extremes (j = 1, 99.2%)
    assert '| 1.04x [1.01-1.30] |' in main_table(list(rows.values()), (44, 44))  # (1.045 printed 1.04)
    few = {r['case']: r for r in summarize(runs('limit', limit[:5]) + runs('stra', stra[:5]))}
    assert few['stra']['time_vs_limit_interval'] is None
    assert '| 1.03x |' in main_table(list(few.values()), (44, 44))


def test_in_process_run(capsys, tmp_path):
    """``--in-process`` measures every case in this process: same rows as the isolated runs."""
    argv = ['--task', 'fer', '--cases', 'twin,stra', '--modes', 'train', '--batch-sizes', '2', '--repeats', '1',
            '--warmup', '0', '--iters', '1', '--no-sweep', '--no-progress', '--in-process', '--device', 'cpu',
            '--json', str(tmp_path / 'b.json')]
    assert main(argv) == 0
    summary = json.loads((tmp_path / 'b.json').read_text())['summary']
    assert {r['peak_vs_twin'] for r in summary} == {None} and {r['step_mb'] for r in summary} == {None}
    out = capsys.readouterr().out
    assert 'each run in this one process' in out
    assert '| train | 2 | StRA (local + mode) |' in out and '| train | 2 | ResNet-50 twin |' in out
    # one CPU process's peak resident set carries over from run to run: no memory columns (they read 0.01x)
    assert "Memory: not given ('-')" in out
    assert all(line.split(' | ')[9:13] == ['-'] * 4 for line in out.splitlines() if line.startswith('| train | 2 |'))


def test_the_sweep_runs_with_inference_only_and_stays_out_of_the_main_table(capsys):
    argv = ['--task', 'fer', '--cases', 'twin', '--modes', 'train', '--batch-sizes', '2', '--repeats', '1',
            '--warmup', '0', '--iters', '1', '--sweep', '1,2', '--sweep-batch', '1', '--no-progress', '--in-process']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'Resolution sweep' not in out and '| infer |' not in out and '| train | 2 | ResNet-50 twin |' in out
    assert main([*argv[:5], 'infer,train', *argv[6:]]) == 0
    out = capsys.readouterr().out  # the sweep's batch-1 inference is in the sweep's table, not in the main one
    assert 'Resolution sweep' in out and '| infer | 1 |' not in out and '| infer | 2 | ResNet-50 twin |' in out


def test_a_run_that_fails_is_reported_after_the_tables(tmp_path, capsys):
    """A run that times out (or dies) was a traceback that lost every other run's measurement."""
    path = tmp_path / 'bench.json'
    argv = ['--task', 'fer', '--cases', 'twin', '--modes', 'infer', '--batch-sizes', '2', '--repeats', '1',
            '--no-sweep', '--no-progress', '--timeout', '0.001', '--json', str(path)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert '## Speed and memory' in captured.out
    assert captured.err.strip().splitlines() == ['timm-stra bench: 1 of 1 runs failed (left out of the tables):',
                                                 '  twin infer b2 44x44 #1: the run timed out after 0.001 s.']
    record = json.loads(path.read_text())
    assert record['raw'] == [] and record['failed'] == ['twin infer b2 44x44 #1: the run timed out after 0.001 s.']


def test_cpu_default_cases_leave_out_the_cuda_only_kernels(tmp_path):
    path = tmp_path / 'bench.json'
    argv = ['--task', 'fer', '--modes', 'infer', '--batch-sizes', '1', '--repeats', '1', '--warmup', '0', '--iters',
            '1', '--no-sweep', '--no-progress', '--in-process', '--device', 'cpu', '--json', str(path)]
    assert main(argv) == 0
    cases = [row['case'] for row in json.loads(path.read_text())['summary']]
    assert sorted(cases) == sorted(c for c in CASES if c not in ('stra_triton', 'stra_keep'))


def test_compile_run(capsys, compiled_eagerly):
    """``--compile`` compiles each model in its first warm-up step and says so; the StRA training step (with the
    diversity term, read from what the compiled forward recorded) runs. Dynamo traces for real; the eager backend
    stands in for inductor's code generation, which takes minutes on 2 cores."""
    argv = ['--task', 'fer', '--cases', 'twin,stra', '--modes', 'train', '--batch-sizes', '2', '--repeats', '1',
            '--warmup', '2', '--iters', '1', '--no-sweep', '--no-progress', '--in-process', '--device', 'cpu',
            '--compile', 'reduce-overhead']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [mode for _, mode in compiled_eagerly] == ['reduce-overhead'] * 2
    assert '(torch.compile mode=reduce-overhead)' in out and '| train | 2 | StRA (local + mode) |' in out


def test_log_runs_prints_each_run_as_it_finishes(capsys):
    """``--log-runs``: one line per run on stderr, with its median step and peak, before the table at the end."""
    argv = ['--task', 'fer', '--cases', 'twin,stra', '--modes', 'infer', '--batch-sizes', '2', '--repeats', '2',
            '--warmup', '0', '--iters', '1', '--no-sweep', '--in-process', '--device', 'cpu', '--log-runs']
    assert main(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith('run ')]
    assert len(err) == 4 and err[0].startswith('run 1/4: twin infer b2 44x44 #1: ')
    assert all(' ms/step (median), peak ' in line for line in err)


def test_the_allocator_settings_name_what_is_set(monkeypatch):
    from timm_stra.benchmarks.machine import ALLOCATOR_VARIABLES, allocator_settings
    for name in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert allocator_settings() == 'defaults'
    monkeypatch.setenv('THP_MEM_ALLOC_ENABLE', '1')
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '4294967296')
    monkeypatch.setenv('MALLOC_TOP_PAD_', '')  # set but empty: glibc ignores it, so do we
    assert allocator_settings() == 'THP_MEM_ALLOC_ENABLE=1, MALLOC_TRIM_THRESHOLD_=4294967296'


def _stat(path: Path) -> List[str]:
    """The fields of a ``/proc/<pid>/stat`` after ``pid (comm)``: state, parent pid, ..."""
    return path.read_text().rsplit(')', 1)[1].split()


def _children(pid: int) -> List[int]:
    """The processes whose parent is ``pid`` (read from ``/proc``: no ``pgrep`` needed)."""
    children = []
    for path in Path('/proc').glob('[0-9]*/stat'):
        try:
            if int(_stat(path)[1]) == pid:
                children.append(int(path.parent.name))
        except OSError:  # (a process that exited meanwhile)
            continue
    return children


def _alive(pid: int) -> bool:
    try:
        return _stat(Path(f'/proc/{pid}/stat'))[0] != 'Z'  # (a zombie has exited)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_a_worker_leaves_when_the_process_that_started_it_is_killed(tmp_path):
    """Workers are the forkserver's children, not the bench's: killed without cleaning up (SIGKILL, a timeout
    outside), the bench must not leave a measurement running on."""
    code = ('from timm_stra.benchmarks.isolate import run_isolated\n'
            'from timm_stra.benchmarks.worker import Measurement\n'
            "run_isolated(Measurement(case='limit', task='fer', mode='infer', batch=2, img_size=(44, 44), "
            "device='cpu', warmup=1, iters=10 ** 6))\n")
    # (killed, it cannot remove its multiprocessing folder, pymp-*: it makes it here)
    bench = subprocess.Popen([sys.executable, '-c', code], env=dict(os.environ, TMPDIR=str(tmp_path)))
    workers, deadline = [], time.time() + 120
    try:
        while not workers and time.time() < deadline:
            time.sleep(0.5)
            workers = [w for server in _children(bench.pid) for w in _children(server)]
        assert workers, 'no worker started'
        bench.kill()
        bench.wait()
        deadline = time.time() + 30
        while any(map(_alive, workers)) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers))
    finally:  # a failed test leaves no measurement running on
        bench.kill()
        bench.wait()
        for worker in filter(_alive, workers):
            os.kill(worker, signal.SIGKILL)


def test_tensor_memory_peak_of_a_step_worked_out_by_hand():
    """Two bias-free 1024x1024 linears on a batch of 256: the peak is in the first layer's backward, with the
    weights (8 MiB), the input (1), the second weight's gradient (4), the hidden gradient (1) and the first weight's
    gradient (4) live: 18 MiB. (Replaying operators' self memory booked their frees at their start: 17.)"""
    from timm_stra.benchmarks.tensor_memory import step_peak_mib
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024, bias=False), torch.nn.Linear(1024, 1024, bias=False))
    assert step_peak_mib(model, torch.randn(256, 1024)) == pytest.approx(18.0, abs=0.01)
