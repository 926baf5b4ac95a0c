"""The command-line value types every command shares (``timm_stra.arguments``)."""
import argparse

import pytest

from timm_stra.arguments import at_least, fraction, non_negative_float, positive_float


@pytest.mark.parametrize('parse, text, value', [
    (at_least(0), '0', 0), (at_least(2), '7', 7), (non_negative_float, '0', 0.0), (non_negative_float, '1e-3', 1e-3),
    (positive_float, '0.5', 0.5), (fraction(), '0', 0.0), (fraction(), '1', 1.0),
    (fraction(include_one=False), '0.99', 0.99),
])
def test_values_in_range_are_parsed(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize('parse, text, message', [
    (at_least(2), '1', 'expected 2 or more, got 1'), (at_least(0), '1.5', "expected an integer, got '1.5'"),
    (non_negative_float, '-1e-9', "expected 0 or more, got '-1e-9'"),
    (non_negative_float, 'inf', "expected a finite number, got 'inf'"),
    (positive_float, '0', "expected a number above 0, got '0'"), (positive_float, 'x', "expected a number, got 'x'"),
    (fraction(), '1.01', "expected a number from 0 to 1, got '1.01'"),
    (fraction(), '-0.1', "expected a number from 0 to 1, got '-0.1'"),
    (fraction(include_one=False), '1', "expected a number from 0 to 1, below 1, got '1'"),
    (fraction(), 'nan', "expected a finite number, got 'nan'"),
])
def test_values_out_of_range_say_what_to_give(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match='^' + message.replace('.', r'\.') + '$'):
        parse(text)
