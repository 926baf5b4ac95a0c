"""Command-line value types the commands share: comma-separated lists of integers, numbers or names, and bounded
numbers (results files: ``atomic.results_file``). A value out of range is refused as argparse refuses any bad
value: one line naming the option, what was given and what to give."""
import argparse
import math
import re
from typing import Callable, List, Optional, Sequence


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


def at_least(lowest: int, highest: Optional[int] = None) -> Callable[[str], int]:
    """A type for an integer of at least ``lowest`` (and at most ``highest``, when given)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
        if value < lowest or (highest is not None and value > highest):
            wanted = f'{lowest} or more' if highest is None else f'an integer from {lowest} to {highest}'
            raise argparse.ArgumentTypeError(f'expected {wanted}, got {value}')
        return value
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'expected a finite number, got {text!r}')
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'expected a number above 0, got {text!r}')
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected 0 or more, got {text!r}')
    return value


def fraction(include_one: bool = True) -> Callable[[str], float]:
    """A type for a number from 0 to 1 (a probability), or below 1 without ``include_one``."""
    def parse(text: str) -> float:
        value = _finite(text)
        if value < 0 or value > 1 or (value == 1 and not include_one):
            raise argparse.ArgumentTypeError(
                f'expected a number from 0 to 1{"" if include_one else ", below 1"}, got {text!r}')
        return value
    return parse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)" after an option's help only where it tells something: not for a required option,
    one without a value by default (None, an empty list, a flag's False) or one whose help gives its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or '', action.default
        empty = default is None or default is False or (isinstance(default, (list, tuple)) and not default)
        if action.required or empty or default is argparse.SUPPRESS or 'default' in text:
            return text
        if default == '':
            return text + " (default: '')"
        return super()._get_help_string(action)


def help_text(doc: str) -> str:
    """A module docstring as a command's ``--help`` shows it: reStructuredText's ``literals`` as plain text, and
    the references to the project's specification (``(SPEC 3)``), which users do not have, left out."""
    text = re.sub(r'\s*\(SPEC [\d.]+\)', '', doc)
    return re.sub(r'``([^`]+)``', r'\1', text)
