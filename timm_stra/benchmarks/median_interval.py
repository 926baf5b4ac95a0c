"""A distribution-free confidence interval for a median, from order statistics.

The benchmarks' ratios scatter round by round (by 10-20% on the 2-core machines this project
is built on), so "StRA at most 1.05x the limit" needs more than a median to be read: whether
1.05 lies above the interval the median is known to. For n independent rounds, the j-th
smallest and j-th largest values bracket the true median with probability
``1 - 2 P(Binomial(n, 1/2) < j)`` whatever the distribution (the sign test's interval); ``j``
is taken as large as the confidence allows. It assumes nothing of the shape of the
distribution, only that rounds are independent draws of it, which drift over a run breaks:
read it as the precision of the median, not a guarantee.
"""
import math
from typing import Optional, Sequence, Tuple


def _binomial_half_cdf(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Optional[Tuple[float, float]]:
    """(low, high): the sign-test interval of the median of ``values`` at ``confidence`` or more.

    ``None`` where there are too few values for it (5 or fewer at 95%: even the smallest and the
    largest value bracket the median with less than 95% probability).
    """
    if not 0 < confidence < 1:
        raise ValueError(f'median_interval: confidence must be in (0, 1), got {confidence}.')
    n = len(values)
    ordered = sorted(values)
    # largest j (1-based) with 2 P(X <= j - 1) <= 1 - confidence
    j = 0
    while j < n // 2 and 2 * _binomial_half_cdf(n, j) <= 1 - confidence:
        j += 1
    if j == 0:
        return None
    return ordered[j - 1], ordered[n - j]
