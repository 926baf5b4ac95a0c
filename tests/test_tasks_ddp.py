"""The training command under ``torchrun`` with 2 CPU processes (gloo): the image check shared, DDP, sharded
evaluation, rank 0 writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import one_thread_fixture, make_market1501
from timm_stra.tasks.evaluate import main as eval_main

one_thread = pytest.fixture(autouse=True)(one_thread_fixture)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reid_under_torchrun_two_cpu_processes(tmp_path):
    data = make_market1501(tmp_path / 'market')  # 24 training images of 4 IDs; 7 queries, 20 gallery images
    # the second training image is unreadable: rank 1 decodes it (each rank checks every other image), and
    # both ranks must leave it out of the same list for the distributed sampler to shard
    (data / 'bounding_box_train' / '0001_c1s1_000001_01.jpg').write_bytes(b'\xff\xd8 truncated')
    run = tmp_path / 'run'
    (tmp_path / 'tmp').mkdir()  # torchrun's log folder (torchelastic_*) goes there, not to the machine's
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', TMPDIR=str(tmp_path / 'tmp'))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'timm_stra.cli', 'train', 'reid', '--data', str(data), '--output', str(run), '--device', 'cpu',
           '--epochs', '2', '--freeze-epochs', '1', '--batch-size', '4', '--input-size', '64', '32',
           '--backbone-init', '', '--eval-interval', '1', '--workers', '0', '--no-progress', '--skip-bad',
           '--model-kwargs', 'layers=[1,1,1,1]']
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one line per epoch: only rank 0 wrote; the epoch's samples are summed over both ranks (12 each);
    # the run also checked after every epoch (the second after re-wrapping DDP for the
    # unfrozen backbone) that both replicas hold identical weights and BatchNorm statistics
    log = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in log] == [1, 2]
    assert all(r['samples'] == 24 for r in log)  # 23 readable, padded by the sampler to 12 a rank
    assert all(r['skipped_bad'] == 1 for r in log)  # found by rank 1, known to rank 0
    assert proc.stdout.count('| metric | value |') == 1
    # the metrics gathered from the two evaluation shards equal a one-process evaluation of the checkpoint
    out = tmp_path / 'eval.json'
    assert eval_main(['reid', '--data', str(data), '--model', str(run), '--workers', '0', '--no-progress',
                      '--device', 'cpu', '--output', str(out)]) == 0
    single = json.loads(out.read_text())['metrics']
    for key in ('mAP', 'rank1', 'rank5', 'rank10'):
        assert log[-1][key] == pytest.approx(single[key], abs=1e-9), key
