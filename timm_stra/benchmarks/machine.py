"""A description of the machine a benchmark ran on: CPU, threads, load, CPU allocator, accelerator, versions."""
import os
import platform
from typing import Dict, Optional

import timm
import torch


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> Optional[str]:
    """1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return ', '.join(f'{v:.2f}' for v in os.getloadavg())
    except (AttributeError, OSError):
        return None


# what decides how often a CPU step pays page faults for its large tensors (see the README of benchmarks/)
ALLOCATOR_VARIABLES = ('THP_MEM_ALLOC_ENABLE', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_',
                       'MALLOC_MMAP_MAX_', 'MALLOC_ARENA_MAX', 'GLIBC_TUNABLES', 'MALLOC_CONF', 'LD_PRELOAD')


def allocator_settings() -> str:
    """The environment variables that change how CPU tensors get their memory, as ``NAME=value, ...``, or
    ``'defaults'`` where none is set.

    PyTorch allocates CPU tensors with the C library's allocator (no cache of its own): glibc's
    ``malloc`` maps blocks over 32 MiB afresh each time (and smaller ones past a threshold that moves),
    so every step of a large batch pays the page faults of touching them again, which these variables
    change (``THP_MEM_ALLOC_ENABLE=1``: PyTorch asks for 2 MiB pages; glibc's ``MALLOC_*`` and
    ``GLIBC_TUNABLES``: glibc keeps the memory; ``LD_PRELOAD``: another allocator, ``MALLOC_CONF``
    jemalloc's settings).
    """
    found = [f'{name}={os.environ[name]}' for name in ALLOCATOR_VARIABLES if os.environ.get(name)]
    return ', '.join(found) if found else 'defaults'


def describe(device: str) -> Dict[str, object]:
    """The machine as a dict (JSON-ready)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        'cpu': cpu_model(),
        'logical_cpus': os.cpu_count(),
        'usable_cpus': usable,
        'torch_threads': torch.get_num_threads(),
        'load_average': load_average(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'cpu_allocator': allocator_settings(),
        'device': device,
    }
    if torch.device(device).type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info
