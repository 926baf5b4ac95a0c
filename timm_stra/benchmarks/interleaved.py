"""``python -m timm_stra.benchmarks.interleaved``: whole-network steps of every case, interleaved step by step.

``timm-stra bench`` measures every case in a fresh process, which gives each its own
peak memory; but the two runs of a ratio are then seconds to minutes apart, and on a
machine whose speed drifts (a shared virtual machine, such as the 2-core ones we measure on) the
ratios of one round scatter by 10-30%. Here every case's model is built once, in this
process, and the timed steps alternate: each round times one step of every case, so
the two steps of a ratio are taken within the same round, a few steps apart at most.
The order within a round follows a balanced Latin square (``round_orders``): over a
whole cycle of rounds every case runs first and last equally often, and right after
every other case equally often, so that what one step leaves behind (warm caches, the
allocator's free blocks) favours no case. The table gives each case's median step and,
over the rounds, the median, interquartile range and the median's 95% confidence interval
(``median_interval``) of its step time over the limit's and over StRA's in the same round:
"time vs limit" is the yardstick of StRA's speed goal (its attention for free), "time vs StRA"
that of the unfold reference (README, "Where StRA stands").

Not measured here: memory, since the cases share this process and its allocator (use
``timm-stra bench`` or ``tensor_memory``). On the CPU every step still pays page faults
for its large tensors: PyTorch takes them from glibc's ``malloc``, which maps blocks over
32 MiB afresh each time and returns them on free, whatever ran before (the allocator's
settings change that: the header gives the run's, the column "page faults/step" the
process's minor page faults in a step; see the README of ``benchmarks/``).
Python's garbage collector is off during the rounds (as ``timeit`` does); it collects
before them and after each setting.
"""
import argparse
import contextlib
import gc
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..atomic import results_file
from ..markdown import markdown_table
from ..arguments import at_least, help_text, int_list, name_list
from .cases import CASES, TASKS
from .device_options import (add_compile_option, add_device_options, check_compile_warmup, parse_device,
                             precision_labels)
from .machine import describe
from .median_interval import median_interval
from .orders import round_orders
from .page_faults import PAGE_FAULTS_LEGEND, minor_page_faults
from .record import write_run_record
from .worker import MODES, Measurement, build_step

DEFAULT_CASES = ('twin', 'stra', 'limit', 'reference')
REFERENCE_BOUND_LEGEND = (
    'StRA\'s network is the limit\'s plus its operators, so the reference\'s "time vs limit" is about the most its '
    '"time vs StRA" can be: what it would be were StRA\'s operators free. ')


def time_interleaved(steps: Dict[str, Callable[[], None]], rounds: int, warmup: int, device: torch.device,
                     tick: Optional[Callable[[str], None]] = None,
                     faults: Optional[Dict[str, List[int]]] = None) -> Dict[str, List[float]]:
    """Seconds of every round's step of each case: ``warmup`` untimed steps of each, then ``rounds`` rounds
    of one timed step of every case, in the orders of ``round_orders`` (synchronised on CUDA).

    ``tick(case)`` is called after each timed step (progress). Where ``faults`` is given (a dict) and the
    platform counts them, it is filled the same way with each timed step's minor page faults (``page_faults``).
    """
    def sync() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for case, step in steps.items():
        for _ in range(warmup):
            step()
    sync()
    orders = round_orders(list(steps))
    times: Dict[str, List[float]] = {case: [] for case in steps}
    count_faults = faults is not None and minor_page_faults() is not None
    if count_faults:
        faults.update({case: [] for case in steps})
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for case in orders[r % len(orders)]:
                faults0 = minor_page_faults() if count_faults else 0
                t0 = time.perf_counter()
                steps[case]()
                sync()
                times[case].append(time.perf_counter() - t0)
                if count_faults:
                    faults[case].append(minor_page_faults() - faults0)
                if tick is not None:
                    tick(case)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _quartiles(values: Sequence[float]) -> str:
    if len(values) < 2:
        return '-'
    q1, _, q3 = statistics.quantiles(values, n=4, method='inclusive')  # within the data, as numpy's default
    return f'{q1:.2f}-{q3:.2f}'


def _interval(values: Sequence[float]) -> str:
    interval = median_interval(values)
    return '-' if interval is None else f'{interval[0]:.3f}-{interval[1]:.3f}'


def summarize(times: Dict[str, List[float]], mode: str, batch: int,
              faults: Optional[Dict[str, List[int]]] = None) -> List[Dict[str, object]]:
    """One row per case: median step, images/s, a step's minor page faults (median; where ``faults`` has
    them), and the per-round ratios to the limit and to StRA (where measured): their median, interquartile
    range and the median's 95% confidence interval (``median_interval``; '-' for fewer than 6 rounds)."""
    rows = []
    for case, seconds in times.items():
        step = statistics.median(seconds)
        row: Dict[str, object] = {
            'mode': mode, 'batch': batch, 'case': CASES[case].label, 'rounds': len(seconds),
            'ms/step (median)': f'{step * 1e3:.1f}', 'images/s': f'{batch / step:.2f}',
        }
        if faults and faults.get(case):
            row['page faults/step'] = f'{statistics.median(faults[case]):,.0f}'
        for base, label in (('limit', 'limit'), ('stra', 'StRA')):
            if base in times:
                ratios = [a / b for a, b in zip(seconds, times[base])]
                row[f'time vs {label}'] = f'{statistics.median(ratios):.3f}x'
                row[f'IQR vs {label}'] = _quartiles(ratios)
                row[f'95% CI vs {label}'] = _interval(ratios)
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m timm_stra.benchmarks.interleaved', description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='reid', choices=tuple(TASKS), help='model family and input size')
    parser.add_argument('--cases', type=name_list(tuple(CASES)), default=list(DEFAULT_CASES),
                        help=f'comma-separated, from: {", ".join(CASES)} (default: {",".join(DEFAULT_CASES)}; '
                             'the ratios need limit and stra)')
    parser.add_argument('--modes', type=name_list(MODES), default=list(MODES),
                        help='comma-separated, from infer, train (default: infer,train)')
    parser.add_argument('--batch-sizes', type=int_list, default=[16], help='comma-separated (default 16)')
    parser.add_argument('--rounds', type=at_least(1), default=20,
                        help='timed rounds, one step of every case each (default 20); a multiple of the number of '
                             'cases (of twice that, for an odd number) completes the balanced orders')
    parser.add_argument('--warmup', type=at_least(0), default=2, help='untimed steps of every case first (default 2)')
    parser.add_argument('--threads', type=at_least(0), default=0, help="CPU threads (default 0: torch's default)")
    add_device_options(parser)
    add_compile_option(parser, 'every model')
    parser.add_argument('--json', metavar='PATH', type=results_file,
                        help="also write the machine, the settings, the rows and every step's seconds here")
    parser.add_argument('--log-runs', action='store_true',
                        help="print each setting's rows to stderr as it finishes (what a run cut short still "
                             'leaves; the table comes at the end)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = parse_device(parser, args)
    check_compile_warmup(parser, args)
    settings = [(mode, b) for mode in args.modes for b in args.batch_sizes if not (mode == 'train' and b < 2)]
    if not settings:
        parser.error('nothing to measure (a training step needs a batch of 2 or more, for BatchNorm).')
    if args.threads:
        torch.set_num_threads(args.threads)
    task = TASKS[args.task]
    size = tuple(task.input_size[1:])
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(settings) * args.rounds * len(args.cases), desc='interleaved steps', unit='step',
                   leave=False)
    rows: List[Dict[str, object]] = []
    raw = []
    start = time.perf_counter()
    try:
        for mode, batch in settings:
            steps = {case: build_step(Measurement(
                case=case, task=args.task, mode=mode, batch=batch, img_size=size, device=str(device),
                channels_last=args.channels_last, bf16=args.bf16, compile=args.compile)) for case in args.cases}
            if bar is not None:
                bar.set_postfix_str(f'{mode} b{batch}')
            faults: Dict[str, List[int]] = {}
            times = time_interleaved(steps, args.rounds, args.warmup, device,
                                     tick=(lambda case: bar.update()) if bar is not None else None, faults=faults)
            del steps
            gc.collect()
            if args.compile:  # the next setting's models compile afresh, not against this one's cache entries
                torch._dynamo.reset()
            setting_rows = summarize(times, mode, batch, faults)
            rows += setting_rows
            raw.append({'mode': mode, 'batch': batch, 'orders': round_orders(args.cases), 'seconds': times,
                        'minor_page_faults': faults or None})
            if args.log_runs:
                with bar.external_write_mode(file=sys.stderr) if bar is not None else contextlib.nullcontext():
                    for row in setting_rows:
                        print(' | '.join(str(v) for v in row.values()), file=sys.stderr, flush=True)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    machine = describe(str(device))
    flags = precision_labels(args)
    print(f'## Interleaved steps: `{task.stra}` and the other cases ({args.task}, {size[0]}x{size[1]})\n')
    print(f"Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, {torch.get_num_threads()} torch "
          f"threads" + (f", GPU {machine['gpu']}" if 'gpu' in machine else '')
          + f"; CPU allocator {machine['cpu_allocator']}; torch {machine['torch']}, timm {machine['timm']}"
          + f"; device {device}"
          + (f" ({', '.join(flags)})" if flags else '') + '.')
    print(f'{args.rounds} rounds of one step of every case (orders from a balanced Latin square), in this one '
          f'process, after {args.warmup} warm-up step{"" if args.warmup == 1 else "s"} each, in {wall / 60:.1f} min. '
          '"time vs X": the step time over X\'s in the same round, median '
          'over the rounds, its interquartile range (IQR) and the 95% confidence interval of that median '
          '(sign test: distribution-free, for independent rounds); below 1 is faster. '
          + (REFERENCE_BOUND_LEGEND if task.keeps_last_conv and {'stra', 'limit', 'reference'} <= set(args.cases)
             else '')
          + (PAGE_FAULTS_LEGEND if any('page faults/step' in row for row in rows) else '')
          + 'No peak memory here: see `timm-stra bench`.\n')
    print(markdown_table(rows))
    if args.json:
        problem = write_run_record(args.json, machine, args, wall, rows=rows, raw=raw)
        if problem:
            print(f'{parser.prog}: {problem}', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
