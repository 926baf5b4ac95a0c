"""``timm-stra models``: build every registered timm-stra model and print a Markdown table.

Columns: parameters (all, and without the classifier), GMACs of one image at the
model's input size (every product, the classifier's too, counted as the "all products"
column of ``timm-stra table``: ``benchmarks/macs.py``) and the output shape.
"""
import argparse
import sys
from typing import Dict, List, Optional

import timm
import torch
from timm.models import model_entrypoint
from tqdm import tqdm

import timm_stra  # noqa: F401  (registers the models)

from ..arguments import help_text
from ..benchmarks.macs import count_macs, count_params
from ..markdown import markdown_table


def stra_model_names(pretrained: bool = False) -> List[str]:
    """Every model this package registers with timm; with ``pretrained``, every ``name.tag`` with weights."""
    names = timm.list_models(pretrained=pretrained)
    return [n for n in names if model_entrypoint(n.split('.')[0]).__module__.startswith('timm_stra.')]


def describe(name: str, device: str = 'meta') -> Dict[str, object]:
    """Params, GMACs and output shape of one model, built from scratch on ``device`` (``meta``: shapes only, no
    memory or arithmetic; the CPU gives the same numbers, slower)."""
    model = timm.create_model(name, device=device).eval()
    input_size = tuple(model.pretrained_cfg['input_size'])
    with torch.no_grad():
        out = model(torch.randn(1, *input_size, device=device))
    return {
        'model': name,
        'input': 'x'.join(map(str, input_size)),
        'params (M)': count_params(model, exclude_classifier=False) / 1e6,
        'params w/o classifier (M)': count_params(model) / 1e6,
        'GMACs': count_macs(model, input_size).total / 1e9,
        'output': tuple(out.shape[1:]),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-stra models', description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--filter', default='*', help='wildcard on model names (default: all)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    names = [n for n in stra_model_names() if n in timm.list_models(args.filter)]
    if not names:
        print(f'timm-stra models: no timm-stra model matches {args.filter!r} (they are: '
              f"{', '.join(stra_model_names())}).", file=sys.stderr)
        return 1
    print(markdown_table([describe(n) for n in tqdm(names, desc='models', unit='model', leave=False,
                                                    disable=args.no_progress)]))
    return 0
