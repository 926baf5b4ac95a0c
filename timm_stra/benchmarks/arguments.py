"""Command-line value types the benchmarks share: comma-separated lists of integers, numbers or names, and bounded
numbers (results files: ``atomic.results_file``)."""
import argparse
import math
from typing import Callable, List, Sequence


def int_list(text: str) -> List[int]:
    """'16,64' -> [16, 64]; positive integers only."""
    try:
        values = [int(v) for v in text.split(',') if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f'expected positive integers, got {text!r}')
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f'{", ".join(map(str, twice))} given more than once')
    return values


def float_list(text: str) -> List[float]:
    """'1,2,4' -> [1.0, 2.0, 4.0]; positive numbers only."""
    try:
        values = [float(v) for v in text.split(',') if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f'expected positive numbers, got {text!r}')
    return values


def name_list(choices: Sequence[str]) -> Callable[[str], List[str]]:
    """A type for comma-separated names, each one of ``choices``, at least one, none twice."""
    def parse(text: str) -> List[str]:
        values = [v for v in text.split(',') if v]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f'{bad or text!r}: choose from {", ".join(choices)}')
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise argparse.ArgumentTypeError(f'{", ".join(twice)} given more than once')
        return values
    return parse


def at_least(lowest: int) -> Callable[[str], int]:
    """A type for an integer of at least ``lowest``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f'expected {lowest} or more, got {value}')
        return value
    return parse


def positive_float(text: str) -> float:
    """A finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f'expected a number above 0, got {text!r}')
    return value


