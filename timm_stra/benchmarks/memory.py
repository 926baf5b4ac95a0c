"""Peak memory of a stretch of work in this process: CPU resident set or CUDA allocations.

CPU: on Linux the kernel keeps the peak resident set (``VmHWM`` in
``/proc/self/status``) and lets a process reset it to the current resident set
(write ``5`` to ``/proc/self/clear_refs``), so the peak of the measured work is
read without the transient peak of building the model. Elsewhere the fallback is
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the process's peak since it
started. Either way this counts every byte the process touches (tensors,
allocator caches, oneDNN workspaces), which Python-level tools such as
``tracemalloc`` do not see. Run each measurement in a fresh process so that the
allocator state of one case does not leak into the next.

CUDA: ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated``.
"""
import re
import resource
import sys
from typing import Optional

import torch


def _status_mb(field: str) -> Optional[float]:
    try:
        with open('/proc/self/status') as f:
            match = re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _ru_maxrss_mb() -> float:
    """Peak RSS since the process started, MiB (``ru_maxrss`` is bytes on macOS, KiB on Linux)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2 ** 20 if sys.platform == 'darwin' else maxrss / 1024


class PeakMemory:
    """Current and peak memory (MiB) since ``reset()``, for ``device``."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == 'cuda'
        self.method = 'cuda max_memory_allocated' if self.cuda else 'process peak RSS'

    def reset(self) -> float:
        """Start a new peak here; returns the current memory (the baseline)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2 ** 20
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self.method = 'process peak RSS (VmHWM, reset before the timed steps)'
        except OSError:
            self.method = 'process peak RSS (ru_maxrss, since process start)'
        current = _status_mb('VmRSS')
        return current if current is not None else _ru_maxrss_mb()

    def peak(self) -> float:
        """Peak memory since ``reset()`` (or since the process started, on the ru_maxrss fallback)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        hwm = _status_mb('VmHWM') if self.method.startswith('process peak RSS (VmHWM') else None
        return hwm if hwm is not None else _ru_maxrss_mb()
