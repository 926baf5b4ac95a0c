"""One speed/memory measurement, meant to run in a fresh process: ``python -m timm_stra.benchmarks.worker SPEC``.

``SPEC`` is a JSON object (see ``Measurement``). The process builds the case's
model, runs ``warmup`` untimed steps and ``iters`` timed ones, and prints one
JSON line: the median seconds per step, and memory. A fresh process per
measurement keeps the CPU peak to this one case: the peak resident set of this
process (model, buffers, activations, allocator caches; see ``memory.py``),
with nothing left over from other cases. On CUDA the peak is
``torch.cuda.max_memory_allocated``. ``timm-stra bench`` calls ``run`` in processes
forked from a preloaded server (``isolate.py``) rather than through this entry point.
"""
import gc
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

MODES = ('infer', 'train')


@dataclass(frozen=True)
class Measurement:
    """What one worker measures.

    Attributes:
        case, task: see ``timm_stra.benchmarks.cases``.
        mode: 'infer' (eval mode, ``torch.inference_mode``) or 'train' (forward, backward and an
            SGD-with-momentum step, with the diversity term added for StRA models).
        batch: images per step.
        img_size: (H, W).
        device: 'cpu' or 'cuda'.
        threads: CPU threads (``torch.set_num_threads``); 0 keeps torch's default.
        channels_last, bf16: memory format and bf16 autocast.
        warmup, iters: untimed and timed steps.
        compile: '' (eager), or a ``torch.compile`` mode for the model ('default', 'reduce-overhead',
            'max-autotune', ...): compiled in the first warm-up step, so give it warm-up steps.
    """
    case: str
    task: str
    mode: str
    batch: int
    img_size: Tuple[int, int]
    device: str = 'cpu'
    threads: int = 0
    channels_last: bool = False
    bf16: bool = False
    warmup: int = 1
    iters: int = 1
    compile: str = ''


def build_step(m: Measurement) -> Callable[[], None]:
    """The case's model and input for ``m``, built; returns one step of ``m.mode`` on them (not yet run).

    Inference runs under ``torch.inference_mode``; a training step is forward, backward (with the
    diversity term for StRA models) and an SGD-with-momentum step. The step does not synchronise.
    """
    from timm_stra import diversity_loss
    from .cases import CASES, TASKS, build_case

    if m.mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {m.mode!r}.')
    device = torch.device(m.device)
    model = build_case(m.case, m.task, m.img_size, device=device)
    in_chans = TASKS[m.task].input_size[0]
    memory_format = torch.channels_last if m.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if m.compile:
        # the module compiled in place: the diversity term reads the masks its StRA modules recorded
        model.compile(mode=m.compile)
    x = torch.randn(m.batch, in_chans, *m.img_size, device=device).to(memory_format=memory_format)
    stra = CASES[m.case].stra
    if m.mode == 'train':
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    else:
        model.eval()

    def step() -> None:
        if m.mode == 'infer':
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=m.bf16):
                model(x)
            return
        with torch.autocast(device.type, torch.bfloat16, enabled=m.bf16):
            out = model(x)
            loss = out.float().pow(2).mean()
            if stra:
                loss = loss + diversity_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def run(m: Measurement) -> Dict[str, object]:
    """Build, warm up, time; return seconds per step (median and all; wall and process CPU time), memory (MiB)
    and a timed step's minor page faults (median; ``page_faults``; ``None`` where the platform does not count)."""
    from .memory import PeakMemory
    from .page_faults import minor_page_faults

    if m.threads:
        torch.set_num_threads(m.threads)
    device = torch.device(m.device)
    cuda = device.type == 'cuda'
    step = build_step(m)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    gc.collect()
    memory = PeakMemory(device)
    base = memory.reset()  # the memory after the build: what the 'step' column subtracts
    for _ in range(m.warmup):
        step()
    sync()
    memory.reset()  # the peak of the timed steps only, not of a first (or compiling) warm-up step
    times: List[float] = []
    cpu_times: List[float] = []
    faults: List[int] = []
    count_faults = minor_page_faults() is not None
    for _ in range(m.iters):
        faults0 = minor_page_faults() if count_faults else 0
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if count_faults:
            faults.append(minor_page_faults() - faults0)
    peak = memory.peak()
    return {
        **asdict(m),
        'threads_used': torch.get_num_threads(),
        'seconds': statistics.median(times),
        'all_seconds': times,
        'cpu_seconds': statistics.median(cpu_times),
        'images_per_s': m.batch / statistics.median(times),
        'base_mb': base,
        'device_name': torch.cuda.get_device_name(device) if cuda else 'cpu',
        'peak_mb': peak,
        'memory_kind': memory.method,
        'page_faults': statistics.median(faults) if faults else None,
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print('usage: python -m timm_stra.benchmarks.worker \'{"case": ..., "task": ..., ...}\'', file=sys.stderr)
        return 2
    try:
        spec = json.loads(argv[0])
        spec['img_size'] = tuple(spec['img_size'])
        measurement = Measurement(**spec)
    except (ValueError, KeyError, TypeError) as e:  # (json's errors are ValueErrors)
        print(f'python -m timm_stra.benchmarks.worker: not a measurement ({type(e).__name__}: {e}); give a JSON '
              f'object with the fields of Measurement: {", ".join(Measurement.__dataclass_fields__)}.',
              file=sys.stderr)
        return 2
    from .cases import CASES, TASKS
    problem = ('iters must be 1 or more and warmup 0 or more' if measurement.iters < 1 or measurement.warmup < 0 else
               'batch must be 1 or more' if measurement.batch < 1 else
               f'case {measurement.case!r}: choose from {", ".join(CASES)}' if measurement.case not in CASES else
               f'task {measurement.task!r}: choose from {", ".join(TASKS)}' if measurement.task not in TASKS else
               f'mode {measurement.mode!r}: choose from {", ".join(MODES)}' if measurement.mode not in MODES else '')
    if problem:
        print(f'python -m timm_stra.benchmarks.worker: {problem}.', file=sys.stderr)
        return 2
    print(json.dumps(run(measurement)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
