"""Decoding every entry of a data set once before a run, shared among the processes of a distributed run.

Under DDP each process reads the same data set; rather than every process decoding every image,
each decodes every ``world_size``-th one and the findings are gathered, so that all processes
drop (or stop on) the same entries.
"""
from dataclasses import dataclass
from typing import Any, Callable, List, Tuple

from tqdm import tqdm


def _alone(findings: Any) -> List[Any]:
    return [findings]


@dataclass(frozen=True)
class CheckShare:
    """This process's part in checking a data set.

    It decodes the entries ``rank``, ``rank + world_size``, ...; ``gather`` returns every process's
    findings in rank order (``all_gather_objects`` under DDP). The default is one process doing all.
    """
    rank: int = 0
    world_size: int = 1
    gather: Callable[[Any], List[Any]] = _alone


def find_undecodable(count: int, decode: Callable[[int], Any], share: CheckShare = CheckShare(),
                     progress: bool = False, desc: str = 'checking images') -> List[Tuple[int, str]]:
    """The entries ``0..count-1`` on which ``decode(index)`` raises, found by all processes together.

    Returns:
        sorted (index, reason) pairs, the same on every process; the reason names the exception.
    """
    failed = []
    for index in tqdm(range(share.rank, count, share.world_size), desc=desc, unit='image', leave=False,
                      disable=not progress):
        try:
            decode(index)
        except Exception as e:  # PIL raises many types for broken files
            failed.append((index, f'{type(e).__name__}: {e}'))
    return sorted(finding for part in share.gather(failed) for finding in part)
