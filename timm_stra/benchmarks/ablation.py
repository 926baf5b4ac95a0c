"""``timm-stra table``: reproduce the params/FLOPs columns of the paper's ablation (Tables 1 and 2).

Every row is built through ``timm.create_model`` with the ablation knobs and
counted under the paper's convention (SPEC 3): parameters of the eval-mode
network without the ID classifier, and multiply-accumulates (the paper's
"FLOPs") of the convolution and linear layers for one image at 256x128. Further
columns add what that convention leaves out: the attention products torch's
flop counter sees (``bmm``: SASA's and the mode attention's) and the local
attention's aggregation, which is elementwise and counted analytically (see
``timm_stra.benchmarks.macs``). The face (112x112) and FER (44x44) variants and
their twins are extra rows at their own input sizes.

``--check`` exits with status 1 unless every value the paper prints is
reproduced to its printed precision. No data, no weights, no timing: a few
seconds per row on a CPU.
"""
import argparse
import json
import sys
from typing import Dict, Iterable, List, Optional

import timm

import timm_stra  # noqa: F401  (registers the models)
from ..arguments import help_text
from ..atomic import results_file, save_results
from ..markdown import markdown_table
from .device_options import parse_device
from .macs import count_macs, count_params
from .rows import EXTRA_ROWS, PAPER_ROWS, AblationRow


def _decimals(printed: str) -> int:
    return len(printed.split('.')[1]) if '.' in printed else 0


def reproduces(ours: float, printed: Optional[str]) -> Optional[bool]:
    """Whether ``ours`` rounds to the paper's ``printed`` value at its precision (None: nothing printed)."""
    if printed is None:
        return None
    return f'{ours:.{_decimals(printed)}f}' == printed


def measure_row(row: AblationRow, device: str = 'meta') -> Dict[str, object]:
    """Build one row's model (eval mode, no classifier) and count its params and MACs at its input size.

    Counting needs shapes only, so the model is built on the ``meta`` device by default
    (no memory, no arithmetic: a fraction of a second per model); ``device='cpu'`` gives
    the same numbers, slower.
    """
    model = timm.create_model(row.model, num_classes=0, device=device, **row.kwargs).eval()
    input_size = tuple(model.pretrained_cfg['input_size'])
    macs = count_macs(model, input_size)
    params_m = count_params(model) / 1e6
    gmacs = macs.conv_linear / 1e9
    checks = [c for c in (reproduces(params_m, row.params_m), reproduces(gmacs, row.gmacs)) if c is not None]
    return {
        'label': row.label,
        'tables': row.tables,
        'model': row.model,
        'knobs': dict(row.kwargs),
        'input': 'x'.join(map(str, input_size)),
        'paper': {'params_m': row.params_m, 'gmacs': row.gmacs, 'map': row.map, 'rank1': row.rank1},
        'params': count_params(model),
        'params_m': params_m,
        'gmacs_conv_linear': gmacs,
        'gmacs_matmul': macs.matmul / 1e9,
        'gmacs_local_aggregation': macs.local_aggregation / 1e9,
        'gmacs_total': macs.total / 1e9,
        'left_out_pct': 100 * (macs.total - macs.conv_linear) / macs.total,
        'macs_by_op': macs.by_op,
        'reproduced': all(checks) if checks else None,
    }


def measure(rows: Iterable[AblationRow], progress: bool = False, device: str = 'meta') -> List[Dict[str, object]]:
    """``measure_row`` over ``rows``, optionally with a tqdm progress bar on stderr."""
    rows = list(rows)
    if progress:
        from tqdm.auto import tqdm
        rows = tqdm(rows, desc='counting', unit='model', leave=False)
    return [measure_row(r, device) for r in rows]


def to_markdown(results: List[Dict[str, object]]) -> str:
    """The ablation table: the paper's values beside ours; '-' where the paper prints none."""
    def paper(r, key):
        return r['paper'][key] or '-'

    def match(r):
        return {True: 'yes', False: '**NO**', None: '-'}[r['reproduced']]

    rows = [{
        'table': r['tables'] or 'extra',
        'row': r['label'],
        'timm.create_model': '`{}({})`'.format(r['model'], ', '.join(f'{k}={v!r}' for k, v in r['knobs'].items())),
        'input': r['input'],
        'mAP / R-1 (paper)': f"{paper(r, 'map')} / {paper(r, 'rank1')}",
        'Params M (paper)': paper(r, 'params_m'),
        'Params M (ours)': f"{r['params_m']:.3f}",
        'GMACs (paper)': paper(r, 'gmacs'),
        'GMACs conv+linear (ours)': f"{r['gmacs_conv_linear']:.3f}",
        '+ attn. matmuls': f"{r['gmacs_matmul']:.4f}",
        '+ local aggr.': f"{r['gmacs_local_aggregation']:.4f}",
        'all products': f"{r['gmacs_total']:.3f}",
        'left out by paper': f"{r['left_out_pct']:.2f}%",
        'reproduced': match(r),
    } for r in results]
    return markdown_table(rows)


NOTE = ('GMACs: multiply-accumulates of one image (the paper\'s "FLOPs"); params exclude the classifier. '
        '"conv+linear" is the paper\'s convention; "attn. matmuls" are the batched products torch\'s flop '
        'counter sees (SASA, mode attention); "local aggr." is StRA\'s k*k*C*H\'*W\' local weighted sum '
        '(elementwise, counted analytically); "all products" is their sum. Elementwise ops (BN, activations, '
        'softmax, gates) are counted by none of them.')


def failures(results: List[Dict[str, object]]) -> List[str]:
    """One line for every paper value we do not reproduce to its printed precision."""
    lines = []
    for r in results:
        for key, ours in (('params_m', r['params_m']), ('gmacs', r['gmacs_conv_linear'])):
            printed = r['paper'][key]
            if reproduces(ours, printed) is False:
                lines.append(f"{r['label']}: {key} paper {printed}, ours {ours:.4f} "
                             f"(off by {ours - float(printed):+.4f})")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-stra table', description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json', metavar='PATH', type=results_file,
                        help='also write the rows (all counts, by op) to this JSON file')
    parser.add_argument('--check', action='store_true',
                        help='exit 1 unless every paper value is reproduced to its printed precision')
    parser.add_argument('--paper-only', action='store_true', help="only the paper's rows (no face/FER rows)")
    parser.add_argument('--device', default='meta',
                        help="device the models are built on; counting needs shapes only (default: meta)")
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    device = parse_device(parser, args, kinds=('meta', 'cpu', 'cuda'))
    rows = PAPER_ROWS if args.paper_only else PAPER_ROWS + EXTRA_ROWS
    results = measure(rows, progress=not args.no_progress, device=str(device))
    print(to_markdown(results))
    print('\n' + NOTE)
    if args.json:
        problem = save_results(args.json, json.dumps(
            {'convention': 'MACs of one image, eval mode, no classifier', 'rows': results}, indent=2))
        if problem:
            print(f'{parser.prog}: {problem}', file=sys.stderr)
            return 1
    if args.check:
        bad = failures(results)
        if bad:
            print('\nNOT reproduced:\n' + '\n'.join(bad), file=sys.stderr)
            return 1
        print(f"\ncheck: all {sum(r['reproduced'] is not None for r in results)} paper rows reproduced "
              'to their printed precision.')
    return 0
