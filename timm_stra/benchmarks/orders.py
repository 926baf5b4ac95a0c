"""The order of the cases within each round of an interleaved benchmark.

A step (or a run) can be slowed by the one before it (caches, the allocator, the clock): with
the cases in the same order every round, or rotated, each case keeps the same predecessor and
that effect reads as the case's own cost. A balanced Latin square puts every case after every
other equally often.
"""
from typing import List, Sequence


def round_orders(cases: Sequence[str]) -> List[List[str]]:
    """The orders of one cycle of rounds: a balanced Latin square (Williams design) over ``cases``.

    Every case takes every position once per cycle, and follows every other case equally often: once
    per cycle for an even number of cases (a cycle of n rounds), twice for an odd one (2n rounds, the
    rows and their reverses). Rounds beyond a cycle start it again.
    """
    n = len(cases)
    first, low, high = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[cases[(i + shift) % n] for i in first] for shift in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]
