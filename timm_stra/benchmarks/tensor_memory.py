"""``python -m timm_stra.benchmarks.tensor_memory``: exact peak of live tensor memory in a training step.

``timm-stra bench`` reports the process's peak resident set on CPU, which also
holds whatever the allocator keeps and so moves by a few percent with the order
of allocations. This counts the tensors themselves: torch's profiler records
every allocation and free (``profile_memory=True``); replaying them in order
from the parameters and buffers gives the peak of live tensor bytes during one
forward + backward step (to the granularity of operators: what an operator
allocates and frees inside itself is not seen). Deterministic, so one run is
enough; no timing is taken.
"""
import argparse
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from ..diversity import diversity_loss
from .cases import CASES, TASKS, build_case


def live_tensor_bytes(fn: Callable[[], Any]) -> Tuple[Any, int, int]:
    """Run ``fn`` and replay the allocations it makes: (its result, peak bytes, bytes still live at its end).

    Counts the tensors ``fn`` allocates (what already existed is not counted), to the granularity
    of operators.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return result, peak, live


def step_peak_mib(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Peak live tensor MiB (parameters and buffers included) of one training step of ``model`` on ``x``."""
    model.train()

    def step():
        loss = model(x).float().square().mean() + diversity_loss(model)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: lazy allocations (e.g. oneDNN primitives) happen outside the counted step
    _, peak, _ = live_tensor_bytes(step)
    resident = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return (resident + peak) / 2 ** 20


def measure(task: str, cases: List[str], batch: int) -> List[Dict[str, object]]:
    """One row per case: peak MiB and the ratio to the first case (the twin)."""
    rows = []
    for case in cases:
        model = build_case(case, task)
        x = torch.randn(batch, *TASKS[task].input_size)
        rows.append({'case': CASES[case].label, 'peak MiB': step_peak_mib(model, x)})
    for row in rows:
        row['vs twin'] = row['peak MiB'] / rows[0]['peak MiB']
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_stra.benchmarks.tensor_memory', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='reid', choices=sorted(TASKS))
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--cases', default='twin,stra,limit,reference',
                        help=f'comma-separated, the first is the baseline; from {sorted(CASES)}')
    args = parser.parse_args(argv)
    cases = args.cases.split(',')
    unknown = [c for c in cases if c not in CASES]
    if unknown or args.batch_size < 2:
        parser.error(f'unknown cases {unknown}' if unknown else 'a training step needs a batch of 2 or more')
    rows = measure(args.task, cases, args.batch_size)
    size = 'x'.join(map(str, TASKS[args.task].input_size))
    print(f'Peak live tensor memory of a training step, {args.task} {size}, batch {args.batch_size}:\n')
    print('| case | peak MiB | vs twin |\n| --- | --- | --- |')
    for row in rows:
        print(f"| {row['case']} | {row['peak MiB']:.1f} | {row['vs twin']:.3f}x |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
