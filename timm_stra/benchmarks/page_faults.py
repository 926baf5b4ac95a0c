"""The process's minor page faults: how much memory a CPU step touched for the first time.

PyTorch allocates CPU tensors with the C library's allocator, which returns large blocks to
the system on free (glibc: every block over 32 MiB, and smaller ones past a threshold that
moves with what was freed before). A step that allocates them again pays a page fault per
page it touches, and on the virtual machines this project is built on that is a large and
variable share of a step: counting the faults tells that share apart from the operators'
own time, where timings alone cannot. Minor faults are those the kernel served without I/O
(fresh zeroed pages, mostly); counted by ``getrusage`` where the platform has it.
"""
from typing import Optional

try:
    import resource
except ImportError:  # Windows
    resource = None


def minor_page_faults() -> Optional[int]:
    """This process's minor page faults so far (all threads), or ``None`` where ``getrusage`` is missing."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faulted_mib(faults: float) -> float:
    """MiB of memory that ``faults`` page faults brought in (one page each)."""
    page = resource.getpagesize() if resource is not None else 4096
    return faults * page / 2 ** 20
