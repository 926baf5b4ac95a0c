"""The process's minor page faults: how often a CPU step touched memory for the first time.

PyTorch allocates CPU tensors with the C library's allocator, which returns large blocks to
the system on free (glibc: every block over 32 MiB, and smaller ones past a threshold that
moves with what was freed before). A step that allocates them again pays a page fault per
page it touches, and on the virtual machines we measure on that is a large and
variable share of a step: counting the faults tells that share apart from the operators'
own time, where timings alone cannot. Minor faults are those the kernel served without I/O
(fresh zeroed pages, mostly); counted by ``getrusage`` where the platform has it, for the
whole process (every thread). Each fault maps one page: 4 KiB on most Linux machines, but
2 MiB where huge pages back the memory (``THP_MEM_ALLOC_ENABLE=1``, or transparent huge pages
set to ``always``), so a count converts to memory only where the page size is known.
"""
from typing import Optional

try:
    import resource
except ImportError:  # Windows
    resource = None

# how the benchmarks' tables explain their column "page faults/step"
PAGE_FAULTS_LEGEND = ('"page faults/step": the process\'s minor page faults in a step (median), each a page touched '
                      'afresh: 4 KiB, or 2 MiB where huge pages back it. ')


def minor_page_faults() -> Optional[int]:
    """This process's minor page faults so far (all threads), or ``None`` where ``getrusage`` is missing."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
