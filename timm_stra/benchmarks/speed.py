"""``timm-stra bench``: throughput and peak memory of StRA beside its ResNet-50 twin.

Cases (see ``cases.py``): the twin, StRA, the *limit* (the twin with its
last-stage 3x3 convs replaced by identities: StRA's cost if its attention were
free), StRA built from the reference operators (unfold local attention, mode
attention in the paper's order: the authors' design), and SASA + Mode.

For each mode (inference; training step = forward, backward, SGD step) and batch
size, at the task's resolution, every case is measured in a fresh process
(warm-up steps, then timed steps; peak memory of that process, or
``torch.cuda.max_memory_allocated``). Repeats are interleaved (round r runs
every case once, in the order of row r of a balanced Latin square, ``orders.py``)
so that a change in machine load hits all cases alike and no case always follows
the same other; the tables give medians over the repeats and ratios to
the twin of the same run. ``--in-process`` runs every measurement in this one
process instead: much quicker on a GPU, where the peak is the allocator's count of
live tensors and is reset for each run (on CPU the peak resident set would then
include what earlier runs left in the allocator). A resolution sweep (1x, 2x, 4x the pixels, inference)
shows how each operator's cost grows with the map.
"""
import argparse
import contextlib
import copy
import gc
import math
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..atomic import results_file
from ..arguments import at_least, float_list, help_text, int_list, name_list, positive_float
from .cases import CASES, TASKS
from .device_options import add_compile_option, add_device_options, check_compile_warmup, parse_device, precision_labels
from .isolate import run_isolated
from .machine import describe, load_average
from .orders import round_orders
from .page_faults import PAGE_FAULTS_LEGEND
from .record import write_run_record
from .speed_summary import main_table, summarize, sweep_table
from .worker import MODES, Measurement, run

Setting = Tuple[str, int, Tuple[int, int]]  # mode, batch, (H, W)


def scaled_size(size: Tuple[int, int], pixels: float, multiple: int = 8) -> Tuple[int, int]:
    """(H, W) scaled to about ``pixels`` times the area, each side rounded to a multiple of ``multiple``.

    ``pixels=1`` returns ``size`` as it is.
    """
    if pixels == 1:
        return tuple(size)
    side = math.sqrt(pixels)
    return tuple(max(multiple, int(round(s * side / multiple)) * multiple) for s in size)


def plan(
        modes: Sequence[str],
        batch_sizes: Sequence[int],
        size: Tuple[int, int],
        sweep: Sequence[float],
        sweep_batch: int,
) -> List[Setting]:
    """The settings to measure: modes x batch sizes at ``size``, then the inference resolution sweep.

    Training steps need a batch of at least 2 (BatchNorm, e.g. the ReID embedding's
    BatchNorm1d), so training at batch 1 is left out.
    """
    settings = [(mode, b, size) for mode in modes for b in batch_sizes if not (mode == 'train' and b < 2)]
    for pixels in sweep:
        setting = ('infer', sweep_batch, scaled_size(size, pixels))
        if setting not in settings:
            settings.append(setting)
    return settings


def schedule(cases: Sequence[str], settings: Sequence[Setting], repeats: int) -> List[Tuple[int, Setting, str]]:
    """The runs, as (repeat, setting, case): repeat by repeat, every setting with every case, the cases of repeat r
    in the order ``round_orders(cases)`` gives round r (a balanced Latin square)."""
    orders = round_orders(cases)
    return [(r, s, c) for r in range(repeats) for s in settings for c in orders[r % len(orders)]]


def run_all(
        cases: Sequence[str],
        settings: Sequence[Setting],
        repeats: int,
        progress: bool = True,
        isolate: bool = True,
        timeout: float = 1800.,
        log: Optional[Callable[[str], None]] = None,
        failures: Optional[List[str]] = None,
        **measurement_kwargs,
) -> List[Dict[str, object]]:
    """Every (setting, case) ``repeats`` times, interleaved; one fresh process per measurement unless not
    ``isolate``. ``log`` is given one line per run as it finishes (its median step and peak memory). A run that
    fails or times out raises ``RuntimeError``, or where ``failures`` is a list, is added to it (why, in a line)
    and the other runs go on."""
    jobs = schedule(cases, settings, repeats)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc='benchmark', unit='run', leave=False)
    results = []
    try:
        for r, (mode, batch, size), case in jobs:
            if bar is not None:
                bar.set_postfix_str(f'{case} {mode} b{batch} {size[0]}x{size[1]} #{r + 1}')
            measurement = Measurement(case=case, mode=mode, batch=batch, img_size=size, **measurement_kwargs)
            try:
                result = run_isolated(measurement, timeout) if isolate else _run_here(measurement)
            except RuntimeError as e:  # (a worker's failure, time-out or death; in process, out of memory)
                if failures is None:
                    raise
                reason = str(e).splitlines()[0].replace(str(measurement), 'the run')
                failures.append(f'{case} {mode} b{batch} {size[0]}x{size[1]} #{r + 1}: {reason}')
                if bar is not None:
                    bar.update()
                continue
            results.append(dict(result, repeat=r))
            if log is not None:
                line = (f"run {len(results)}/{len(jobs)}: {case} {mode} b{batch} {size[0]}x{size[1]} #{r + 1}: "
                        f"{result['seconds'] * 1e3:.2f} ms/step (median), peak {result['peak_mb']:.0f} MiB")
                with bar.external_write_mode(file=sys.stderr) if bar is not None else contextlib.nullcontext():
                    log(line)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return results


def _run_here(measurement: Measurement) -> Dict[str, object]:
    """``worker.run`` in this process, after freeing what the previous run left (on CUDA, its cached blocks and
    cuBLAS workspaces too)."""
    gc.collect()
    if torch.device(measurement.device).type == 'cuda':
        # cuBLAS keeps a workspace per stream in the caching allocator, made at its first use: without
        # this the first run's memory would hold them and later runs' not
        clear_workspaces = getattr(torch._C, '_cuda_clearCublasWorkspaces', None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()
    return run(measurement)


# defaults that keep a CPU run under 10 minutes on 2 cores; a GPU gets more steps
# on the CPU ``stra_triton`` is ``stra`` (its kernels run on CUDA only): not measured twice by default
CPU_DEFAULTS = dict(cases=[c for c, spec in CASES.items() if spec.by_default and c != 'stra_triton'],
                    batch_sizes=[1, 16], repeats=3, warmup=1, iters=1, sweep_batch=1)
CUDA_DEFAULTS = dict(cases=[c for c, spec in CASES.items() if spec.by_default], batch_sizes=[16, 64], repeats=3,
                     warmup=5, iters=20, sweep_batch=16)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-stra bench', description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='reid', choices=tuple(TASKS), help='model family and input size')
    add_device_options(parser)
    parser.add_argument('--cases', type=name_list(tuple(CASES)), default=None,
                        help='comma-separated, from: ' + ', '.join(CASES) + ' (default: all but stra_keep; on CPU '
                        'also without stra_triton, whose kernels run on CUDA only; twin is needed for the ratios to '
                        'the twin)')
    parser.add_argument('--modes', type=name_list(MODES), default=list(MODES),
                        help='comma-separated, from infer, train (default: infer,train)')
    parser.add_argument('--batch-sizes', type=int_list, default=None,
                        help=f"default {CPU_DEFAULTS['batch_sizes']} on CPU, {CUDA_DEFAULTS['batch_sizes']} on CUDA")
    parser.add_argument('--repeats', type=int, default=None, help='interleaved repeats (default 3)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed steps per run (default 1 CPU, 5 CUDA)')
    parser.add_argument('--iters', type=int, default=None, help='timed steps per run (default 1 CPU, 20 CUDA)')
    parser.add_argument('--threads', type=at_least(0), default=0, help="CPU threads (default 0: torch's default)")
    parser.add_argument('--sweep', type=float_list, default=[1, 2, 4],
                        help='pixel multiples of the resolution sweep (inference; default 1,2,4)')
    parser.add_argument('--sweep-batch', type=int, default=None, help='batch of the sweep (default 1 CPU, 16 CUDA)')
    parser.add_argument('--no-sweep', action='store_true', help='skip the resolution sweep')
    parser.add_argument('--timeout', type=positive_float, default=1800.,
                        help='seconds before one run is abandoned (runs in fresh processes, not --in-process)')
    parser.add_argument('--in-process', action='store_true',
                        help='every run in this process, not a fresh one (quick on a GPU; see above)')
    parser.add_argument('--json', metavar='PATH', type=results_file,
                        help='also write machine, settings, summary and raw runs here')
    parser.add_argument('--cpu-time', action='store_true',
                        help='add process CPU time columns (CPU runs; includes steal time on a virtual machine)')
    add_compile_option(parser, 'every model (--in-process lets later runs reuse the compiled code)')
    parser.add_argument('--log-runs', action='store_true',
                        help="print each run's median step and peak to stderr as it finishes (what a run cut short "
                             'still leaves; the table comes at the end)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = str(parse_device(parser, args))
    defaults = CUDA_DEFAULTS if torch.device(device).type == 'cuda' else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, copy.copy(value))  # (not the module's own lists)
    for key in ('repeats', 'iters', 'sweep_batch'):
        if getattr(args, key) < 1:
            parser.error(f'--{key.replace("_", "-")} must be >= 1.')
    if args.warmup < 0:
        parser.error('--warmup must be >= 0.')
    check_compile_warmup(parser, args)
    if 'twin' not in args.cases:
        print('note: no twin among --cases, so no ratios to the twin.', file=sys.stderr)
    task = TASKS[args.task]
    size = tuple(task.input_size[1:])
    sweep = [] if args.no_sweep or 'infer' not in args.modes else args.sweep  # (the sweep times inference)
    asked = plan(args.modes, args.batch_sizes, size, [], args.sweep_batch)
    settings = plan(args.modes, args.batch_sizes, size, sweep, args.sweep_batch)
    if 'train' in args.modes and 1 in args.batch_sizes:
        print('note: no training step at batch 1 (BatchNorm needs 2 samples).', file=sys.stderr)
    if not asked:
        parser.error(f'nothing to measure at the {args.task} input size {size[0]}x{size[1]} (training needs '
                     '--batch-sizes of 2 or more).')
    machine = describe(device)
    start = time.perf_counter()
    failures: List[str] = []
    raw = run_all(args.cases, settings, args.repeats, progress=not args.no_progress, isolate=not args.in_process,
                  timeout=args.timeout, failures=failures, task=args.task,
                  device=device, threads=args.threads, channels_last=args.channels_last, bf16=args.bf16,
                  warmup=args.warmup, iters=args.iters, compile=args.compile,
                  log=(lambda line: print(line, file=sys.stderr, flush=True)) if args.log_runs else None)
    wall = time.perf_counter() - start
    machine['load_average_after'] = load_average()
    machine['threads_used'] = raw[0]['threads_used'] if raw else None
    rows = summarize(raw)
    on_cpu = torch.device(device).type == 'cpu'
    memory = not (args.in_process and on_cpu)
    if not memory:  # one process's peak resident set carries what earlier runs left: no figure, in the record too
        for row in rows:
            row.update(peak_mb=None, step_mb=None, peak_vs_twin=None, step_mem_vs_twin=None)

    faults_counted = on_cpu and any(r['page_faults'] is not None for r in rows)
    cpu_note = ("'CPU-ms/image': process CPU time (all threads), less sensitive than wall time to other load; "
                'its ratio is twin CPU time / case CPU time (like the speed ratio: above 1 is faster).')
    flags = precision_labels(args)
    print(f"## Speed and memory: `{task.stra}` vs `{task.twin}` ({args.task}, {size[0]}x{size[1]})\n")
    print(f"Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, {machine['threads_used']} torch threads"
          + (f", GPU {machine['gpu']}" if 'gpu' in machine else '')
          + f"; load average (1/5/15 min) {machine['load_average']} before, {machine['load_average_after']} after; "
          f"CPU allocator {machine['cpu_allocator']}; torch {machine['torch']}, timm {machine['timm']}; device {device}"
          + (f" ({', '.join(flags)})" if flags else '') + '.')
    where = 'this one process' if args.in_process else 'a fresh process'
    print(f'Runs: {args.repeats} interleaved repeats x {args.warmup} warm-up + {args.iters} timed steps, '
          f"medians; each run in {where}; {len(raw)} runs in {wall / 60:.1f} min. "
          + (f"Memory: {raw[0]['memory_kind'] if raw else '-'}; 'step' = peak minus memory after the model was "
             'built. ' if memory else
             "Memory: not given ('-'): in one CPU process a run's peak resident set holds what earlier runs left "
             'in the allocator. ')
          + "Ratios: 'vs twin' of images/s (above 1: faster than the twin); 'time vs' of step time (from 6 repeats "
          "on with the median's 95% confidence interval, [low-high]) and 'peak vs' / 'step vs' of memory (below 1: "
          "faster, smaller). "
          + ("'best': the fastest timed step over all repeats, the least disturbed by other load. "
             if len(raw) > 0 else '')
          + (PAGE_FAULTS_LEGEND if faults_counted else '') + (cpu_note if args.cpu_time and on_cpu else '') + '\n')
    print(main_table([r for r in rows if (r['mode'], r['batch'], tuple(r['img_size'])) in asked], size,
                     cpu=args.cpu_time and on_cpu, faults=faults_counted, memory=memory))
    if sweep:
        sizes = [scaled_size(size, p) for p in sweep]
        print(f'\nResolution sweep (inference, batch {args.sweep_batch}): ms/image (median; best), its growth over '
              'the first size, and the throughput ratio to the twin at that size.\n')
        print(sweep_table(rows, sizes, args.sweep_batch, size))
    status = 0
    if args.json:
        problem = write_run_record(args.json, machine, args, wall, summary=rows, raw=raw, failed=failures)
        if problem:
            print(f'{parser.prog}: {problem}', file=sys.stderr)
            status = 1
    if failures:  # the tables and the record hold what the other runs measured
        print(f'{parser.prog}: {len(failures)} of {len(raw) + len(failures)} runs failed (left out of the tables):\n  '
              + '\n  '.join(failures), file=sys.stderr)
        status = 1
    return status
