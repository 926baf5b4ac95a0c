"""The sign-test confidence interval of a median that the interleaved benchmark prints."""
import math
import random

import pytest

from timm_stra.benchmarks.median_interval import median_interval


def test_too_few_values_have_no_interval_at_95_percent():
    # with 5 values even (min, max) misses the median with probability 2 / 32 > 5%
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert median_interval([]) is None
    assert median_interval([5.0, 1.0, 4.0, 2.0, 6.0, 3.0]) == (1.0, 6.0)  # 6 values: 1 - 2 / 64 > 95%


@pytest.mark.parametrize('n, j', [(6, 1), (10, 2), (20, 6), (30, 10), (40, 14)])
def test_the_order_statistics_are_the_sign_test_tables(n, j):
    """The j-th smallest and largest of n values, as published tables of the sign test give them at 95%."""
    values = random.Random(n).sample(range(1000), n)
    ordered = sorted(values)
    assert median_interval(values) == (ordered[j - 1], ordered[n - j])


def test_lower_confidence_narrows_it():
    values = list(range(20))
    low, high = median_interval(values, confidence=0.5)
    # j = 8: 2 P(Bin(20, 1/2) <= 7) = 0.263 <= 0.5, where 2 P(<= 8) = 0.503 is not
    assert (low, high) == (7, 12)
    wide = median_interval(values)
    assert wide[0] < low and high < wide[1]


def test_coverage_of_the_true_median_is_at_least_the_confidence():
    rng = random.Random(0)
    hits = 0
    trials = 2000
    for _ in range(trials):
        values = [rng.lognormvariate(0.0, 0.3) for _ in range(12)]  # skewed, true median 1
        low, high = median_interval(values)
        hits += low <= 1.0 <= high
    assert hits / trials >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / trials)


@pytest.mark.parametrize('confidence', [0.0, 1.0, 1.5])
def test_confidence_outside_zero_and_one_is_an_error(confidence):
    with pytest.raises(ValueError, match='confidence'):
        median_interval([1.0] * 10, confidence)
