"""The options every benchmark takes for where and how it runs: ``--device``, ``--channels-last``, ``--bf16``,
``--compile``."""
import argparse
from typing import List, Sequence

import torch


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` (by default CUDA where available, as every benchmark takes it), ``--channels-last`` and
    ``--bf16``."""
    parser.add_argument('--device', default=None, help='cpu or cuda[:N] (default: cuda if available)')
    parser.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast')


def parse_device(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 kinds: Sequence[str] = ('cpu', 'cuda')) -> torch.device:
    """The device ``args`` asks for, of one of ``kinds``; a parser error for another, or for a CUDA device this
    machine does not have."""
    text = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    choices = ' or '.join(f'{k}[:N]' if k == 'cuda' else k for k in kinds)
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in kinds:
        parser.error(f'--device {text}: choose {choices}.')
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            parser.error(f'--device {text}: CUDA is not available.')
        if device.index is not None and device.index >= count:
            parser.error(f'--device {text}: this machine has {count} CUDA device{"s" if count > 1 else ""} '
                         f'(cuda:0{f" to cuda:{count - 1}" if count > 1 else ""}).')
    return device


def precision_labels(args: argparse.Namespace) -> List[str]:
    """What a table's caption says of the layout and precision: ``['channels_last', 'bf16 autocast']`` or part,
    and of ``--compile`` where the benchmark has it."""
    labels = [label for label, on in (('channels_last', args.channels_last), ('bf16 autocast', args.bf16)) if on]
    compile_mode = getattr(args, 'compile', '')
    return labels + ([f'torch.compile mode={compile_mode}'] if compile_mode else [])


# torch.compile modes that record CUDA graphs: the first step runs the compiled code, the second records the graphs
CUDA_GRAPH_MODES = ('reduce-overhead', 'max-autotune')


def compile_mode(text: str) -> str:
    """An ``argparse`` type for a ``torch.compile`` mode this torch has (a typo failed only once the model ran), or
    '' (not compiled: the default, which argparse passes through the type too)."""
    if not text:
        return text
    from torch._inductor import list_mode_options  # (only when --compile is given: a heavy import)
    modes = list(list_mode_options())
    if text not in modes:
        raise argparse.ArgumentTypeError(f'{text!r}: choose a torch.compile mode, one of {", ".join(modes)}')
    return text


def add_compile_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--compile [MODE]``: ``torch.compile`` ``what`` (the caller's model or operators); '' when not given."""
    parser.add_argument('--compile', metavar='MODE', nargs='?', const='default', default='', type=compile_mode,
                        help=f'torch.compile {what} (MODE: default, reduce-overhead, ...): the first warm-up step '
                             f'compiles; with CUDA graphs ({", ".join(CUDA_GRAPH_MODES)}) the next records them')


def compile_warmup(compile_mode: str) -> int:
    """The warm-up steps ``compile_mode`` needs before a step runs the way all later ones will."""
    return 2 if compile_mode in CUDA_GRAPH_MODES else 1 if compile_mode else 0


def check_compile_warmup(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A parser error where ``--warmup`` would time a step that compiles or records CUDA graphs."""
    need = compile_warmup(args.compile)
    if args.warmup < need:
        parser.error(f'--compile {args.compile} needs --warmup {need} or more: the first step compiles'
                     f'{", the second records CUDA graphs" if need > 1 else ""}.')
