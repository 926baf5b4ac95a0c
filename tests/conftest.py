"""Shared fixtures: the official-parity vectors (a copy in tests/data/parity, checked against the project's read-only
reference folder ../shared where it is there), and torch.compile without code generation."""
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / 'shared'
SHARED_PARITY = SHARED / 'parity'  # the reference the copy is checked against (test_parity.py)
PARITY = Path(__file__).resolve().parent / 'data' / 'parity'


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def parity_dir() -> Path:
    if not PARITY.is_dir():
        pytest.fail(f'parity vectors not found at {PARITY}: the checkout is incomplete')
    return PARITY


@pytest.fixture
def compiled_eagerly(monkeypatch) -> List[Tuple[str, Optional[str]]]:
    """``nn.Module.compile`` with dynamo's eager backend: dynamo traces for real, without inductor's code generation
    (minutes on 2 cores). Returns the (module class name, mode) of every compile call, in order."""
    compile_module = torch.nn.Module.compile
    calls = []

    def compile_eagerly(module, mode=None):
        calls.append((type(module).__name__, mode))
        compile_module(module, backend='eager')

    monkeypatch.setattr(torch.nn.Module, 'compile', compile_eagerly)
    return calls


class GraphRecorder:
    """A ``torch.compile`` backend that runs the traced graphs as they are and keeps them."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def targets(self) -> List[str]:
        """The functions the recorded graphs call, as text."""
        return [str(node.target) for gm in self.graphs for node in gm.graph.nodes if node.op == 'call_function']


@pytest.fixture
def graph_recorder() -> GraphRecorder:
    return GraphRecorder()
