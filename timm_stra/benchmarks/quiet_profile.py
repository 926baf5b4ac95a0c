"""``torch.profiler.profile`` without libkineto's log lines.

libkineto, the profiler's backend, writes its own lines to stderr at each start and stop
("USDT: ... profiler_start"), and on a CPU-only machine with a CUDA build of torch an
alarming "ERROR: ... gpuGetDeviceCount failed with code 35"; torch 2.11 also warns that a
profile "clears events at the end of each cycle". None of it concerns a benchmark that
profiles once: ``quiet_profile`` runs ``profile`` with libkineto's logging off
(``KINETO_LOG_LEVEL``, read when the profiler starts; a value the user set is kept) and one
cycle's events kept as they are (``acc_events``).
"""
import contextlib
import os
from typing import Iterator

from torch.profiler import profile

LOG_LEVEL_VARIABLE = 'KINETO_LOG_LEVEL'
SILENT = '6'  # above libkineto's highest level (its USDT start and stop lines)


@contextlib.contextmanager
def quiet_profile(**kwargs) -> Iterator[profile]:
    """``with profile(**kwargs) as prof``, without libkineto's log lines (see the module docstring)."""
    user_level = os.environ.get(LOG_LEVEL_VARIABLE)
    if user_level is None:
        os.environ[LOG_LEVEL_VARIABLE] = SILENT
    try:
        with profile(acc_events=True, **kwargs) as prof:
            yield prof
    finally:
        if user_level is None:
            os.environ.pop(LOG_LEVEL_VARIABLE, None)
