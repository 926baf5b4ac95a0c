"""``python -m timm_stra.benchmarks.operator``: the last stage's operators on their own.

``timm-stra bench`` times whole networks, where StRA's operators are a small share
of a ResNet-50 step. This times only the operators that replace the last stage's
3x3 convolutions, at the shapes they see in the task's network (read from a
forward pass of the model on the ``meta`` device), one step being every operator
of the stage once:

* ``stra``: ``StRAttention`` as the models build it;
* ``stra-keep``: ``StRAttention(recompute=False)``, which keeps for backward what ``stra``
  recomputes there (its branches' hidden maps and the local output): the time that saves;
* ``reference``: ``StRAttention(reference=True)``, the unfold local attention and the
  mode attention in the paper's order (the authors' design);
* ``conv3x3``: the twin's 3x3 convolution;
* ``stra-triton`` (CUDA, with triton; in the default list there): ``stra`` with
  ``use_triton``, its inference as three Triton kernels (``layers/stra_triton.py``; its
  training step is ``stra``'s).

Inference (``torch.inference_mode``) and training (forward, and backward of fixed dense
output gradients, as the next layer would give them) steps; repeats are interleaved
(each round times ``--iters`` steps of every case, in the order of that round's row of a balanced
Latin square, ``orders.py``, with Python's garbage collector off: ``interleaved.time_interleaved``)
and the table gives the median over the rounds of the mean step time, and the median over the rounds of
its ratio to ``stra``'s in the same round. "saved MiB" is what the step's forward allocates and keeps for
backward (its inputs, parameters and outputs are not counted; under ``--bf16`` the
bf16 copies autocast makes of the weights are, as autocast keeps them for backward):
exact, not timed; on CPU from the profiler's record of allocations, on CUDA from the
allocator's count of live tensor bytes (``torch.cuda.memory_allocated``, blocks of
512 bytes).

On CUDA every timed step ends with a synchronisation, and ``--channels-last`` and
``--bf16`` (autocast, with bf16 inputs as the layer before would give them) give the
layouts and precision a GPU is usually run with. ``--compile [MODE]`` compiles every
operator (``torch.compile``, in place) in its first warm-up step; ``reduce-overhead``
records CUDA graphs in the next one, and its forwards allocate from the graphs' own
memory pool, so "saved MiB" is not given for it. Compiled, ``stra-triton`` is ``stra``
(compiled code takes the PyTorch path). A training step clears the gradients
first, as an optimizer's ``zero_grad(set_to_none=True)`` would (gradients left in CUDA
graphs' memory must not be accumulated into).
"""
import argparse
import functools
import statistics
from typing import Dict, List, Optional, Tuple

import timm
import torch
from torch import nn
from tqdm import tqdm

from ..layers import DiversityRecorder, StRAttention
from ..layers.stra_triton import HAS_TRITON
from ..markdown import markdown_table
from ..arguments import at_least, help_text, name_list
from .cases import TASKS
from .device_options import (CUDA_GRAPH_MODES, add_compile_option, add_device_options, check_compile_warmup,
                             parse_device, precision_labels)
from .interleaved import time_interleaved
from .tensor_memory import live_tensor_bytes
from .worker import MODES

OpShape = Tuple[int, int, int, int]  # channels, height, width (of the input), stride
IMPLEMENTATIONS = ('stra', 'stra-keep', 'reference', 'conv3x3', 'stra-triton')
CPU_IMPLEMENTATIONS = IMPLEMENTATIONS[:4]  # stra-triton is stra where there is no CUDA


def stage_shapes(task: str) -> List[OpShape]:
    """(C, H, W, stride) of the input of every StRA operator of ``task``'s StRA model, in order."""
    model = timm.create_model(TASKS[task].stra, device='meta').eval()
    shapes: List[OpShape] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.append((*args[0].shape[1:], m.local.stride)))
             for m in model.modules() if isinstance(m, StRAttention)]
    with torch.no_grad():
        model(torch.empty(1, *TASKS[task].input_size, device='meta'))
    for hook in hooks:
        hook.remove()
    return shapes


def build_ops(impl: str, shapes: List[OpShape], device=None) -> nn.ModuleList:
    """One operator of kind ``impl`` per shape."""
    if impl == 'conv3x3':
        return nn.ModuleList(nn.Conv2d(c, c, 3, stride=s, padding=1, bias=False, device=device)
                             for c, _, _, s in shapes)
    ops = nn.ModuleList(StRAttention(c, stride=s, reference=impl == 'reference', recompute=impl != 'stra-keep',
                                     device=device) for c, _, _, s in shapes)
    for op in ops:
        op.use_triton = impl == 'stra-triton'
    return ops


def _forward(ops: nn.ModuleList, inputs: List[torch.Tensor], bf16: bool = False) -> List[torch.Tensor]:
    with torch.autocast(inputs[0].device.type, torch.bfloat16, enabled=bf16):
        return [op(x) for op, x in zip(ops, inputs)]


def _step(ops: nn.ModuleList, inputs: List[torch.Tensor], mode: str, out_grads: List[torch.Tensor],
          bf16: bool = False) -> None:
    """One inference or training step; training clears the gradients of ``inputs`` and of the parameters, then
    back-propagates ``out_grads`` (in the outputs' dtype and layout), dense gradients as the layer after the
    operator would give them (the gradient of a ``.sum()`` is a broadcast scalar, whose odd strides send some
    products down slow paths that a network never takes)."""
    if mode == 'infer':
        with torch.inference_mode(), torch.autocast(inputs[0].device.type, torch.bfloat16, enabled=bf16):
            for op, x in zip(ops, inputs):
                op(x)
    else:
        for t in (*inputs, *ops.parameters()):
            t.grad = None
        torch.autograd.backward(_forward(ops, inputs, bf16), out_grads)
    if inputs[0].is_cuda:
        torch.cuda.synchronize(inputs[0].device)


def per_round_ratio(times: List[float], base: List[float]) -> float:
    """Median over the rounds of ``times[r] / base[r]``: the ratio within each round, which a machine's slower
    drifts (they move whole rounds) leave alone, where a ratio of the two medians would take them in."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def _steps(count: int, *args) -> None:
    """``count`` consecutive ``_step(*args)`` (one timed call of ``time_interleaved``)."""
    for _ in range(count):
        _step(*args)


def saved_mib(ops: nn.ModuleList, inputs: List[torch.Tensor], bf16: bool = False) -> float:
    """MiB of tensors a training forward of ``ops`` allocates and keeps for backward (its inputs and parameters,
    which the network holds anyway, and its outputs, which the next layer holds, are not counted). The diversity
    terms the operators keep from an earlier forward are dropped first: the new ones replace them, and the
    count would be net of what that frees."""
    for module in ops.modules():
        if isinstance(module, DiversityRecorder):
            module.kept.clear()
    if inputs[0].is_cuda:
        device = inputs[0].device
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        outputs = _forward(ops, inputs, bf16)
        torch.cuda.synchronize(device)
        live = torch.cuda.memory_allocated(device) - before
        # the allocator hands out blocks of 512 bytes
        held = sum(-(-out.untyped_storage().nbytes() // 512) * 512 for out in outputs)
        del outputs
        return (live - held) / 2 ** 20
    outputs, _, live = live_tensor_bytes(lambda: _forward(ops, inputs, bf16))
    return (live - sum(out.untyped_storage().nbytes() for out in outputs)) / 2 ** 20


def measure(task: str, batch: int, impls=CPU_IMPLEMENTATIONS, modes=MODES, repeats: int = 5, iters: int = 5,
            warmup: int = 2, progress: bool = True, device='cpu', channels_last: bool = False,
            bf16: bool = False, compile: str = '') -> List[Dict[str, object]]:
    """Median step milliseconds of every (mode, implementation), ratios to ``stra``, saved MiB (training).

    ``compile``: '' (eager) or a ``torch.compile`` mode; every operator is compiled in place.
    """
    shapes = stage_shapes(task)
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    ops = {impl: build_ops(impl, shapes, device).to(memory_format=memory_format) for impl in impls}
    # CUDA graphs' forwards allocate nothing: they write into the graphs' memory pool
    count_saved = not (compile in CUDA_GRAPH_MODES and torch.device(device).type == 'cuda')
    # under autocast the layer before hands the operators its output in bf16
    dtype = torch.bfloat16 if bf16 else torch.float32
    inputs = [torch.randn(batch, c, h, w, device=device).to(dtype).contiguous(memory_format=memory_format)
              for c, h, w, _ in shapes]
    grad_inputs = [x.clone().requires_grad_() for x in inputs]
    out_grads = {}
    with torch.no_grad():
        values = None
        for impl in impls:  # the same values for every implementation, in its outputs' dtype and layout
            outputs = _forward(ops[impl], inputs, bf16)
            values = values or [torch.randn(out.shape, device=out.device) for out in outputs]
            out_grads[impl] = [torch.empty_like(out).copy_(v) for out, v in zip(outputs, values)]
    if compile:  # after that eager pass: the first warm-up step compiles
        for op in (op for stage in ops.values() for op in stage):
            op.compile(mode=compile)
    times: Dict[Tuple[str, str], List[float]] = {}
    bar = tqdm(total=len(modes) * repeats * len(impls), desc=f'{task} operators', disable=not progress, leave=False)
    for mode in modes:
        steps = {}
        for impl in impls:
            ops[impl].train(mode == 'train')
            steps[impl] = functools.partial(_steps, iters, ops[impl], grad_inputs if mode == 'train' else inputs,
                                            mode, out_grads[impl], bf16)
            for _ in range(warmup):
                _step(ops[impl], grad_inputs if mode == 'train' else inputs, mode, out_grads[impl], bf16)
        seconds = time_interleaved(steps, repeats, 0, torch.device(device), tick=lambda case: bar.update())
        times.update({(mode, impl): [1e3 * t / iters for t in seconds[impl]] for impl in impls})
    bar.close()
    rows = []
    for mode in modes:
        base = times[mode, 'stra'] if 'stra' in impls else None
        for impl in impls:
            ms = statistics.median(times[mode, impl])
            ratio = per_round_ratio(times[mode, impl], base) if base else None
            if mode == 'train':  # what the timing left them in: the last mode timed
                ops[impl].train()
            rows.append({
                'mode': mode, 'operators': impl, 'ms per stage (median)': ms,
                'vs stra': f'{ratio:.2f}x' if base else '-',
                'saved MiB': saved_mib(ops[impl], grad_inputs, bf16) if mode == 'train' and count_saved else '-',
            })
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_stra.benchmarks.operator', description=help_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='reid', choices=sorted(TASKS))
    parser.add_argument('--batch-size', type=at_least(1), default=16)
    parser.add_argument('--impls', type=name_list(IMPLEMENTATIONS), default=None,
                        help=f'comma-separated, from {", ".join(IMPLEMENTATIONS)} (default: all; on the CPU all but '
                             'stra-triton)')
    parser.add_argument('--modes', type=name_list(MODES), default=list(MODES),
                        help=f'comma-separated, from {", ".join(MODES)} (default: all)')
    parser.add_argument('--repeats', type=at_least(1), default=5, help='interleaved rounds')
    parser.add_argument('--iters', type=at_least(1), default=5, help='timed steps per case and round')
    parser.add_argument('--warmup', type=at_least(0), default=2,
                        help='untimed steps per case and mode, before the rounds')
    parser.add_argument('--threads', type=at_least(0), default=0, help="CPU threads (default 0: torch's default)")
    add_device_options(parser)
    add_compile_option(parser, 'every operator')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    device = parse_device(parser, args)
    default_impls = IMPLEMENTATIONS if device.type == 'cuda' and HAS_TRITON else CPU_IMPLEMENTATIONS
    impls = args.impls or list(default_impls)
    modes = args.modes
    if 'train' in modes and args.batch_size < 2:
        parser.error('a training step needs a batch of 2 or more (BatchNorm)')
    check_compile_warmup(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = stage_shapes(args.task)
    rows = measure(args.task, args.batch_size, impls, modes, args.repeats, args.iters, args.warmup,
                   progress=not args.no_progress, device=device, channels_last=args.channels_last, bf16=args.bf16,
                   compile=args.compile)
    flags = ''.join(f', {label}' for label in precision_labels(args))
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'
    print(f'Last-stage operators of {TASKS[args.task].stra}, batch {args.batch_size}, {where}{flags}; '
          f'inputs (C, H, W, stride): {shapes}\n')
    print(markdown_table(rows))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
