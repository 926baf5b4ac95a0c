"""``python -m timm_stra.benchmarks.step_profile``: where a step's time goes, operator by operator.

Profiles a few steps of the speed benchmark's cases (``cases.py``) with
``torch.profiler``: the same model, input and step as ``worker.py`` times (for
training: forward, backward and an SGD step). It prints, per case, the step's
total self time (on CUDA: of its kernels), the number of ``aten`` operator
calls and of GPU kernels per step, and the operators that take the most self time:
on CUDA the time of the kernels each launched, on the CPU its own CPU time; on CUDA
also the kernels that take the most time. ``--compile [MODE]`` profiles the compiled
model (``torch.compile``; up to two more warm-up steps, for compiling and for recording
CUDA graphs): its generated kernels are launched from the compiled code, not from ``aten``
operators, so the kernel table is where they show.
A profiled step runs slower than a timed one; the table is for finding where the
time goes, ``timm-stra bench`` for how long a step takes.
"""
import argparse
from typing import Dict, List, Optional

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity
from tqdm import tqdm

from ..markdown import markdown_table
from .cases import CASES, TASKS
from ..arguments import at_least, help_text, name_list
from .device_options import add_compile_option, add_device_options, compile_warmup, parse_device, precision_labels
from .quiet_profile import quiet_profile
from .worker import MODES, Measurement, build_step


def _short(name: str, width: int = 60) -> str:
    """``name`` cut in the middle to ``width`` characters: generated kernels differ in their ends (``..._12``)."""
    if len(name) <= width:
        return name
    tail = width // 3
    return f'{name[:width - tail - 3]}...{name[-tail:]}'


STEP_NAMES = {'infer': 'an inference step', 'train': 'a training step'}


COUNT_COLUMNS = ('calls/step', 'aten calls/step', 'kernels/step')


def _shown(row: Dict[str, object]) -> Dict[str, object]:
    """A table row with its calls per step as counts: ``2,372``, or ``12.5`` where the profiled steps differ."""
    def count(v: float) -> str:
        return f'{v:,.0f}' if v == int(v) else f'{v:,.1f}'
    return {k: count(v) if k in COUNT_COLUMNS and v is not None else v for k, v in row.items()}


def profile_case(case: str, task: str, mode: str, batch: int, device: torch.device, channels_last: bool = False,
                 bf16: bool = False, steps: int = 3, top: int = 15, compile: str = '') -> Dict[str, object]:
    """Profile ``steps`` steps (after two unprofiled ones, and those ``compile`` needs to compile and record CUDA
    graphs): per-step totals, the ``top`` operators and (CUDA) the ``top`` kernels. ``compile``: '' (eager) or a
    ``torch.compile`` mode."""
    step = build_step(Measurement(case=case, task=task, mode=mode, batch=batch, img_size=TASKS[task].input_size[1:],
                                  device=str(device), channels_last=channels_last, bf16=bf16, compile=compile))
    cuda = device.type == 'cuda'
    for _ in range(2 + compile_warmup(compile)):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with quiet_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    # the profiler lists every kernel as an event of its own and also adds its time to the operator that
    # launched it: totals come from the kernels, the table from the operators
    kernel_events = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    cpu_ops = [e for e in events if e.device_type == DeviceType.CPU and not e.is_user_annotation]
    if cuda:
        self_time = lambda e: e.self_device_time_total  # noqa: E731
        total_us = sum(e.self_device_time_total for e in kernel_events)
    else:
        self_time = lambda e: e.self_cpu_time_total  # noqa: E731
        total_us = sum(e.self_cpu_time_total for e in cpu_ops)
    kernels = sum(e.count for e in kernel_events)
    ops = sum(e.count for e in cpu_ops if e.key.startswith('aten::'))
    rows = [{'operator': e.key[:60], 'calls/step': e.count / steps, 'ms/step': self_time(e) / steps / 1e3,
             'share': f'{self_time(e) / total_us:.1%}' if total_us else '-'}
            for e in sorted(cpu_ops, key=self_time, reverse=True)[:top]]
    kernel_rows = [{'kernel': _short(e.key), 'calls/step': e.count / steps,
                    'ms/step': e.self_device_time_total / steps / 1e3,
                    'share': f'{e.self_device_time_total / total_us:.1%}' if total_us else '-'}
                   for e in sorted(kernel_events, key=lambda e: e.self_device_time_total, reverse=True)[:top]]
    return {'case': case, 'ms/step (self, total)': total_us / steps / 1e3, 'aten calls/step': ops / steps,
            'kernels/step': kernels / steps if cuda else None, 'top': rows, 'top kernels': kernel_rows}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_stra.benchmarks.step_profile', description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='reid', choices=sorted(TASKS))
    parser.add_argument('--cases', type=name_list(tuple(CASES)), default=['stra', 'limit'],
                        help=f'comma-separated, from {", ".join(CASES)}')
    parser.add_argument('--mode', default='train', choices=MODES)
    parser.add_argument('--batch-size', type=at_least(1), default=16)
    add_device_options(parser)
    parser.add_argument('--steps', type=at_least(1), default=3,
                        help='profiled steps (after two warm-up steps, and up to two more to compile)')
    parser.add_argument('--top', type=at_least(1), default=15, help='operators (and CUDA kernels) listed per case')
    add_compile_option(parser, 'the model')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.mode == 'train' and args.batch_size < 2:
        parser.error('a training step needs a batch of 2 or more (BatchNorm)')
    device = parse_device(parser, args)
    flags = ''.join(f', {label}' for label in precision_labels(args))
    print(f'Profile of {STEP_NAMES[args.mode]}, {args.task}, batch {args.batch_size}, {device}{flags}; '
          f'self time per operator ({"kernel time" if device.type == "cuda" else "CPU time"}).\n')
    results = [profile_case(c, args.task, args.mode, args.batch_size, device, args.channels_last, args.bf16,
                            args.steps, args.top, args.compile)
               for c in tqdm(args.cases, desc='profiling', unit='case', disable=args.no_progress, leave=False)]
    print(markdown_table([_shown({k: v for k, v in r.items() if not k.startswith('top') and v is not None})
                          for r in results]))
    for r in results:
        print(f"\n{CASES[r['case']].label}:\n")
        print(markdown_table([_shown(row) for row in r['top']]))
        if r['top kernels']:
            print(f"\n{CASES[r['case']].label}, kernels:\n")
            print(markdown_table([_shown(row) for row in r['top kernels']]))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
