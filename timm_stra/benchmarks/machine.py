"""A description of the machine a benchmark ran on: CPU, threads, load, accelerator, versions."""
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
        'device': device,
    }
    if torch.device(device).type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info
