"""``python -m timm_stra.benchmarks.tensor_memory``: exact peak of live tensor memory in a training step.

``timm-stra bench`` reports the process's peak resident set on CPU, which also
holds whatever the allocator keeps and so moves by a few percent with the order
of allocations. This counts the tensors themselves: torch's profiler records
every allocation and free (``profile_memory=True``); replaying them in order
from the parameters, buffers and input batch gives the peak of live tensor bytes during one
forward + backward step, allocations inside an operator included (no optimizer: SGD's momentum, a
buffer the size of each parameter, is left out; ``timm-stra bench``'s step has it). Deterministic,
so one run is enough; no timing is taken.
"""
import argparse
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.profiler import ProfilerActivity
from tqdm import tqdm

from ..diversity import diversity_loss
from ..arguments import at_least, help_text, name_list
from .cases import CASES, TASKS, build_case
from .quiet_profile import quiet_profile


def live_tensor_bytes(fn: Callable[[], Any]) -> Tuple[Any, int, int]:
    """Run ``fn`` and replay the allocations it makes: (its result, peak bytes, bytes still live at its end).

    Counts the tensors ``fn`` allocates (what already existed is not counted): every allocation and
    free the profiler records, in the order they happened. (An operator's *self* memory, which the
    profiler's operator events carry, would book a parent's frees at its start, before its children
    allocate, and miss peaks inside it.)
    """
    with quiet_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == '[memory]'), key=lambda event: event[0])  # (stable: ties keep their order)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return result, peak, live


def step_peak_mib(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Peak live tensor MiB of one training step of ``model`` on ``x``, its parameters, buffers and ``x`` included."""
    model.train()

    def step():
        loss = model(x).float().square().mean() + diversity_loss(model)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: lazy allocations (e.g. oneDNN primitives) happen outside the counted step
    _, peak, _ = live_tensor_bytes(step)
    resident = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers(), x))
    return (resident + peak) / 2 ** 20


def measure(task: str, cases: List[str], batch: int, progress: bool = False) -> List[Dict[str, object]]:
    """One row per case: peak MiB and the ratio to the first case's (``vs <its label>``)."""
    rows = []
    for case in tqdm(cases, desc=f'{task} b{batch}', unit='case', disable=not progress, leave=False):
        model = build_case(case, task)
        x = torch.randn(batch, *TASKS[task].input_size)
        rows.append({'case': CASES[case].label, 'peak MiB': step_peak_mib(model, x)})
    for row in rows:
        row[f"vs {rows[0]['case']}"] = row['peak MiB'] / rows[0]['peak MiB']
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_stra.benchmarks.tensor_memory',
                                     description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='reid', choices=sorted(TASKS))
    parser.add_argument('--batch-size', type=at_least(2), default=16, help='a training step needs 2 or more')
    parser.add_argument('--cases', type=name_list(tuple(CASES)), default=['twin', 'stra', 'limit', 'reference'],
                        help=f'comma-separated, the first is the baseline; from {", ".join(CASES)}')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    rows = measure(args.task, args.cases, args.batch_size, progress=not args.no_progress)
    size = 'x'.join(map(str, TASKS[args.task].input_size))
    print(f'Peak live tensor memory of a training step (forward and backward, no optimizer), {args.task} {size}, '
          f'batch {args.batch_size} (weights, buffers and the input batch included):\n')
    baseline = f"vs {rows[0]['case']}"
    print(f'| case | peak MiB | {baseline} |\n| --- | --- | --- |')
    for row in rows:
        print(f"| {row['case']} | {row['peak MiB']:.1f} | {row[baseline]:.3f}x |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
