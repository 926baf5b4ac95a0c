"""The options every benchmark takes for where and how it runs: ``--device``, ``--channels-last``, ``--bf16``."""
import argparse
from typing import List, Optional

import torch


def add_device_options(parser: argparse.ArgumentParser, default: Optional[str] = 'cpu') -> None:
    """``--device`` (``default=None``: CUDA where available), ``--channels-last`` and ``--bf16``."""
    where = 'cuda if available' if default is None else default
    parser.add_argument('--device', default=default, help=f'cpu or cuda[:N] (default: {where})')
    parser.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast')


def parse_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """The device ``args`` asks for; a parser error if it asks for CUDA where there is none."""
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available.')
    return device


def precision_labels(args: argparse.Namespace) -> List[str]:
    """What a table's caption says of the layout and precision: ``['channels_last', 'bf16 autocast']`` or part."""
    return [label for label, on in (('channels_last', args.channels_last), ('bf16 autocast', args.bf16)) if on]
