"""``quiet_profile``: the benchmarks' profiles write nothing of libkineto's to stderr, and leave the environment."""
import os
import subprocess
import sys
import textwrap

import torch
from torch.profiler import ProfilerActivity

from timm_stra.benchmarks.quiet_profile import LOG_LEVEL_VARIABLE, quiet_profile

PROFILE_ONCE = textwrap.dedent('''
    import torch
    from timm_stra.benchmarks.tensor_memory import live_tensor_bytes
    _, peak, _ = live_tensor_bytes(lambda: torch.ones(1024) + 1)
    print(peak)
''')


def test_a_profile_in_a_fresh_process_writes_nothing_to_stderr():
    env = {k: v for k, v in os.environ.items() if k != LOG_LEVEL_VARIABLE}
    done = subprocess.run([sys.executable, '-c', PROFILE_ONCE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 2 * 1024 * 4  # the profile recorded the allocations
    assert done.stderr == ''  # libkineto's "USDT: ... profiler_start" lines (and torch 2.11's warning) were here


def test_the_environment_is_left_as_it_was(monkeypatch):
    monkeypatch.delenv(LOG_LEVEL_VARIABLE, raising=False)
    with quiet_profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(3).sum()
    assert LOG_LEVEL_VARIABLE not in os.environ
    assert any(e.key == 'aten::sum' for e in prof.key_averages())
    monkeypatch.setenv(LOG_LEVEL_VARIABLE, '2')  # the user's own level is theirs
    with quiet_profile(activities=[ProfilerActivity.CPU]):
        assert os.environ[LOG_LEVEL_VARIABLE] == '2'
    assert os.environ[LOG_LEVEL_VARIABLE] == '2'
