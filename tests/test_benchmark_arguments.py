"""The benchmarks refuse bad arguments when they start, with a line that says what to give: not a traceback after
the measurements, nor a table of empty batches."""
import pytest
import torch

from timm_stra.benchmarks.ablation import main as table_main
from timm_stra.benchmarks.interleaved import main as interleaved_main
from timm_stra.benchmarks.operator import main as operator_main
from timm_stra.benchmarks.speed import main as bench_main
from timm_stra.markdown import markdown_table

TOOLS = {'bench': bench_main, 'interleaved': interleaved_main, 'operator': operator_main, 'table': table_main}


@pytest.mark.parametrize('tool, argv, message', [
    ('bench', ['--json', '{file}/b.json'], 'is a file, not a folder: choose a path elsewhere'),
    ('interleaved', ['--json', '{file}/sub/b.json'], 'is a file, not a folder: choose a path elsewhere'),
    ('table', ['--json', '{tmp}'], 'is a folder: give the path of a file'),
    ('bench', ['--device', 'bogus'], '--device bogus: choose cpu or cuda[:N]'),
    ('interleaved', ['--compile', 'fast'], "argument --compile: 'fast': choose a torch.compile mode, one of default"),
    ('bench', ['--device', 'meta'], '--device meta: choose cpu or cuda[:N]'),
    ('operator', ['--device', 'mps'], '--device mps: choose cpu or cuda[:N]'),
    ('table', ['--device', 'xla:0'], '--device xla:0: choose meta or cpu or cuda[:N]'),
    ('bench', ['--threads', '-1'], 'argument --threads: expected 0 or more, got -1'),
    ('interleaved', ['--threads', '-2'], 'argument --threads: expected 0 or more, got -2'),
    ('bench', ['--timeout', '0'], "argument --timeout: expected a number above 0, got '0'"),
    ('operator', ['--batch-size', '0'], 'argument --batch-size: expected 1 or more, got 0'),
    ('operator', ['--warmup', '-1'], 'argument --warmup: expected 0 or more, got -1'),
    ('operator', ['--impls', 'stra,stra'], 'argument --impls: stra given more than once'),
    ('bench', ['--batch-sizes', '16,16'], 'argument --batch-sizes: 16 given more than once'),
    ('bench', ['--modes', 'both'], "argument --modes: ['both']: choose from infer, train"),
    ('bench', ['--modes', 'train', '--batch-sizes', '1', '--sweep', '2'],
     'nothing to measure at the fer input size 44x44'),  # (the sweep alone left the main table empty)
])
def test_bad_arguments_are_refused_with_what_to_do(tmp_path, capsys, tool, argv, message):
    (tmp_path / 'a-file').write_text('x')
    argv = [a.format(file=tmp_path / 'a-file', tmp=tmp_path) for a in argv]
    task = [] if tool == 'table' else ['--task', 'fer']
    with pytest.raises(SystemExit) as exit_info:
        TOOLS[tool](argv + task + ['--no-progress'])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal where there is no CUDA')
def test_cuda_where_there_is_none(capsys):
    with pytest.raises(SystemExit):
        table_main(['--device', 'cuda', '--no-progress'])  # the table built its models there: a driver traceback
    assert '--device cuda: CUDA is not available.' in capsys.readouterr().err


def test_markdown_table_of_no_rows_is_empty():
    assert markdown_table([]) == ''


@pytest.mark.parametrize('argv, message', [
    (['--steps', '0'], 'argument --steps: expected 1 or more, got 0'),  # (a ZeroDivisionError)
    (['--top', '-1'], 'argument --top: expected 1 or more, got -1'),  # (it listed all operators but one)
    (['--mode', 'infer', '--batch-size', '0'], 'argument --batch-size: expected 1 or more, got 0'),
])
def test_step_profile_refuses_bad_counts(capsys, argv, message):
    from timm_stra.benchmarks.step_profile import main as profile_main
    with pytest.raises(SystemExit):
        profile_main(argv + ['--task', 'fer'])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['--cases', 'twin,stra,twin'], 'argument --cases: twin given more than once'),
    (['--cases', 'stra,,fast'], "argument --cases: ['fast']: choose from twin"),  # (was: unknown cases [''])
])
def test_tensor_memory_refuses_bad_cases(capsys, argv, message):
    from timm_stra.benchmarks.tensor_memory import main as memory_main
    with pytest.raises(SystemExit):
        memory_main(argv + ['--task', 'fer', '--no-progress'])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('spec, message', [
    ('{not json', 'not a measurement (JSONDecodeError'),
    ('{"case": "stra", "task": "fer", "mode": "infer", "batch": 1}', "not a measurement (KeyError: 'img_size')"),
    ('{"case": "stra", "task": "fer", "mode": "infer", "batch": 1, "img_size": [44, 44], "iters": 0}',
     'iters must be 1 or more'),
    ('{"case": "fast", "task": "fer", "mode": "infer", "batch": 1, "img_size": [44, 44]}',
     "case 'fast': choose from twin"),  # (a traceback)
    ('{"case": "twin", "task": "fer", "mode": "infer", "batch": 0, "img_size": [44, 44]}',
     'batch must be 1 or more'),  # (measured as 0 images/s)
])
def test_worker_entry_point_refuses_a_bad_spec(capsys, spec, message):
    from timm_stra.benchmarks.worker import main as worker_main
    assert worker_main([spec]) == 2
    assert message in capsys.readouterr().err


def test_a_json_file_that_cannot_be_written_after_the_run_fails_in_one_line(tmp_path, capsys, monkeypatch):
    """The folder was checked at the start; the disk filling up during the run is reported after the table, in a
    line, with exit code 1 (it was a traceback)."""
    import errno
    import timm_stra.atomic

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(timm_stra.atomic, 'atomic_write_text', disk_full)
    path = tmp_path / 'table.json'
    assert table_main(['--paper-only', '--no-progress', '--json', str(path)]) == 1
    out, err = capsys.readouterr()
    assert '| ' in out and not path.exists()
    assert err.strip() == (f'timm-stra table: could not write {path}: No space left on device '
                           '(the results are printed above)')


@pytest.mark.parametrize('env, message', [
    ({'PARTS': 'tests speeed'}, "gpu.sh: unknown part 'speeed' in PARTS; the parts: tests profile speed"),
    ({'PARTS': 'speed', 'SPEED': 'fp32:reid fp16:face'}, "gpu.sh: unknown speed run 'fp16:face' in SPEED"),
])
def test_gpu_script_refuses_a_part_it_does_not_have(tmp_path, env, message):
    """A misspelt part ran nothing and reported success, on device time that is rationed."""
    import os
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu.sh'
    result = subprocess.run(['bash', str(script), str(tmp_path / 'out')], env={**os.environ, **env,
                            'PYTHON': 'false'}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
