"""``timm-stra models``: build every registered timm-stra model and print a Markdown table.

Columns: parameters (all, and without the classifier), GMACs of one image at the
model's input size (every op torch's flop counter knows, multiply-accumulates =
FLOPs / 2) and the output shape.
"""
import argparse
import sys
from typing import Dict, List, Optional

import timm
import torch
from timm.models import model_entrypoint
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import timm_stra  # noqa: F401  (registers the models)


def stra_model_names(pretrained: bool = False) -> List[str]:
    """Every model this package registers with timm; with ``pretrained``, every ``name.tag`` with weights."""
    names = timm.list_models(pretrained=pretrained)
    return [n for n in names if model_entrypoint(n.split('.')[0]).__module__.startswith('timm_stra.')]


def describe(name: str, device: str = 'meta') -> Dict[str, object]:
    """Params, GMACs and output shape of one model, built from scratch on ``device`` (``meta``: shapes only, no
    memory or arithmetic; the CPU gives the same numbers, slower)."""
    model = timm.create_model(name, device=device).eval()
    input_size = model.pretrained_cfg['input_size']
    x = torch.randn(1, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(x)
    classifier = model.get_classifier()
    return {
        'model': name,
        'input': 'x'.join(map(str, input_size)),
        'params (M)': sum(p.numel() for p in model.parameters()) / 1e6,
        'params w/o classifier (M)': sum(p.numel() for p in model.parameters()) / 1e6
        - sum(p.numel() for p in classifier.parameters()) / 1e6,
        'GMACs': counter.get_total_flops() / 2e9,
        'output': tuple(out.shape[1:]),
    }


def markdown_table(rows: List[Dict[str, object]]) -> str:
    """Rows of dicts (same keys) -> Markdown table; floats with 3 decimals ('' for no rows)."""
    if not rows:
        return ''
    cols = list(rows[0])

    def fmt(v):
        return f'{v:.3f}' if isinstance(v, float) else str(v)

    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join(' --- ' for _ in cols) + '|']
    lines += ['| ' + ' | '.join(fmt(r[c]) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-stra models', description=__doc__,
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
