"""Shared fixtures: paths to the read-only reference data in ../shared."""
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / 'shared'
PARITY = SHARED / 'parity'


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def parity_dir() -> Path:
    if not PARITY.is_dir():
        pytest.fail(f'parity vectors not found at {PARITY}; the suite expects ../shared beside the checkout')
    return PARITY
