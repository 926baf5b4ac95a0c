"""Read a state dict from a checkpoint file safely, with errors that name the file and the problem.

Reading goes through timm's ``load_state_dict`` with ``weights_only=True``: a
pickle that would import or call anything beyond tensors and plain containers is
refused before it runs. The ``state_dict`` wrapper of training checkpoints
(torchreid, timm) is unwrapped and ``module.`` prefixes are dropped. NumPy scalars
(torchreid stores ``rank1`` as one) are allowed as data: rebuilding one runs no code.
"""
import contextlib
import pickletools
import re
from pathlib import Path
from typing import Dict, List, Union

import torch
from timm.models import load_state_dict

from .listing import shown_list

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A checkpoint file that cannot (or must not) be read."""


def _numpy_data_globals() -> List[object]:
    """NumPy scalar and dtype constructors, safe under ``weights_only`` (they only rebuild values).

    A pickle names the scalar constructor by the module of the NumPy that wrote it:
    ``numpy.core.multiarray`` before NumPy 2 (the authors' release, from 2020), ``numpy._core.multiarray``
    since; both names are allowed, whichever NumPy reads them.
    """
    try:
        import numpy as np
    except ImportError:
        return []
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64)
    names = [(scalar, f'{module}.scalar') for module in ('numpy.core.multiarray', 'numpy._core.multiarray')]
    return [*names, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def blocked_globals(error: BaseException) -> str:
    """The globals a refused pickle asked for, as torch reports them ('' when it does not say)."""
    text = f'{error} {error.__cause__ or ""}'
    return ', '.join(sorted(set(re.findall(r'GLOBAL ([\w.]+)', text))))


def _pickled_globals(path: Path) -> List[str]:
    """The Python objects a plain pickle file names (its GLOBAL, INST and STACK_GLOBAL opcodes), found by reading
    its opcodes, never by unpickling; [] for a file that is not a pickle."""
    names, strings = set(), []
    with contextlib.suppress(Exception), path.open('rb') as f:  # (not a pickle, or garbled past some point)
        for op, arg, _ in pickletools.genops(f):
            if op.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'BINUNICODE8', 'UNICODE'):
                strings.append(arg)
            elif op.name in ('GLOBAL', 'INST'):
                names.add(arg.replace(' ', '.'))
            elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
                names.add(f'{strings[-2]}.{strings[-1]}')
    return sorted(names)


def read_failure_reason(error: BaseException) -> str:
    """What went wrong reading a file, in a line: the underlying error when timm re-raised it in its words; of
    torch's weights-only unpickler, what it could not read, never its advice to load with ``weights_only=False``."""
    cause = error.__cause__ or error
    text = ' '.join(str(cause).split())
    operand = re.search(r'Unsupported operand \d+', text)  # torch's weights-only unpickler on a garbled stream
    if operand:
        text = operand.group(0)
    elif text.startswith('Weights only load failed'):
        text = 'the safe unpickler (weights_only=True) cannot read it'
    return f'{type(cause).__name__}: {text[:200]}'


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.pth``/``.pth.tar``/``.bin``/``.safetensors`` checkpoint.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a pickle that would run code (refused, never executed), a
            truncated or corrupt file, or a file without a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        what = 'is a folder, not a checkpoint file' if path.is_dir() else 'does not exist'
        raise FileNotFoundError(
            f'{path} {what}. Give the path of the checkpoint file (.pth.tar, .pth or .safetensors).')
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            state_dict = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch, pickle and safetensors raise many types for bad files)
        # timm words every refusal of torch's weights-only unpickler as one of pickle globals, a garbled file's too:
        # only a global torch names is one
        not_a_mapping = re.fullmatch(r"'(\w+)' object has no attribute 'items'", str(e))
        if isinstance(e, AttributeError) and not_a_mapping:  # timm unwraps a dict: the file holds something else
            raise CheckpointError(f'{path}: holds no state dict (found {not_a_mapping.group(1)}). Expected a '
                                  "model's state_dict, or a training checkpoint holding one under 'state_dict'.") from e
        found = blocked_globals(e)
        if found:
            raise CheckpointError(
                f'{path}: refused. Its pickle would import or call {found} while loading, which a '
                'checkpoint of weights never needs; nothing from it was run. Only tensors, numbers and '
                'containers are accepted. If you made this file yourself, re-save its state_dict with torch.save.'
            ) from e
        reason = read_failure_reason(e)
        named = _pickled_globals(path) if 'Unsupported operand' in reason else []
        if named:
            raise CheckpointError(
                f'{path}: refused. It is a pickle in a form the safe loader does not read (protocol 4 or later, as '
                f'pickle.dump writes), naming {shown_list(named, 5)}; nothing '
                'from it was run. If you made this file yourself, re-save its state_dict with torch.save.') from e
        with path.open('rb') as f:
            start = f.read(512).lstrip().lower()
        if start.startswith((b'<!doctype html', b'<html')):
            raise CheckpointError(
                f'{path}: is a web page (HTML), not a checkpoint: the download saved the page a link led to (a '
                'sign-in, confirmation or error page). Download the file itself again.') from e
        kind = 'safetensors file' if path.suffix == '.safetensors' else 'PyTorch checkpoint'
        raise CheckpointError(
            f'{path}: not a readable {kind}; it is truncated, corrupt or in another format '
            f'({reason}). Download or save it again.') from e
    if not isinstance(state_dict, dict) or not state_dict:
        found = 'an empty dict' if isinstance(state_dict, dict) else type(state_dict).__name__
        raise CheckpointError(f'{path}: holds no state dict (found {found}).')
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f'{path}: not a state dict of tensors (e.g. {bad[0]!r} is {type(state_dict[bad[0]]).__name__}). '
            "Expected a model's state_dict, or a training checkpoint holding one under 'state_dict'.")
    return state_dict
