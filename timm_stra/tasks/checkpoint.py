"""Checkpoints: model weights as safetensors in a timm ``local-dir:`` folder, plus a resumable state.

Each checkpoint is a folder ``OUTPUT/checkpoints/epoch-NNNN/`` with

* ``model.safetensors``: the model's state dict (no pickle);
* ``config.json``: timm's hub config (architecture, ``model_args``, ``pretrained_cfg`` with the
  input size and normalisation), so ``timm.create_model('local-dir:<folder>', pretrained=True)``
  rebuilds the trained model;
* ``state.pt``: optimizer, scheduler, AMP scaler, epoch, RNG states, the run's settings; tensors, dicts, lists and
  numbers only, read back with ``torch.load(weights_only=True)``.

Writing is atomic (``timm_stra.atomic``): the folder is written under a temporary name, flushed
to disk and renamed into place (replacing the same epoch's folder of an earlier run), then the
one-line pointer ``OUTPUT/checkpoints/latest`` is replaced. A crash at any moment leaves
``latest`` naming a complete checkpoint: a run resumed from an older checkpoint of its output
points ``latest`` back at it first (``point_latest``), away from the newer ones it abandons.
"""
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.data.model_config import resolve_input_data_config
from timm.models import save_for_hf

from ..atomic import atomic_output_dir, atomic_write_text
from ..checkpoint_file import CheckpointError, blocked_globals, read_failure_reason
from ..hub import contiguous_state_dict

MODEL_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
STATE_FILE = 'state.pt'
LATEST = 'latest'
DATA_KEYS = ('input_size', 'interpolation', 'mean', 'std')  # the preprocessing config.json keeps of a run


def write_model_folder(model: torch.nn.Module, folder: Path, model_args: Dict[str, Any],
                       data_config: Dict[str, Any]) -> None:
    """``model.safetensors`` and timm's hub ``config.json`` for ``model`` built with ``model_args``, by timm's own
    writer (``save_for_hf``; weights contiguous whatever the model's memory format)."""
    args = {k: v for k, v in model_args.items() if k != 'num_classes'}
    data = {k: data_config[k] for k in DATA_KEYS}
    with contiguous_state_dict(model):
        save_for_hf(model, folder, model_args=json.loads(json.dumps(args)), data_config=data, safe_serialization=True)


def save_checkpoint(output_dir, epoch: int, model: torch.nn.Module, model_args: Dict[str, Any],
                    data_config: Dict[str, Any], state: Dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``epoch`` atomically, point ``latest`` at it, keep the ``keep`` newest.

    Args:
        output_dir: the run's output folder.
        epoch: epochs completed.
        model: the (unwrapped) model.
        model_args, data_config: for ``config.json`` (see ``write_model_folder``).
        state: training state (tensors, containers, numbers, strings only).
    """
    root = Path(output_dir) / 'checkpoints'
    root.mkdir(parents=True, exist_ok=True)
    name = f'epoch-{epoch:04d}'
    final = root / name  # replaced if it exists: the same epoch written again (a run resumed from an older one)
    with atomic_output_dir(final, overwrite=True) as tmp:
        write_model_folder(model, tmp, model_args, data_config)
        torch.save(state, tmp / STATE_FILE)
    atomic_write_text(root / LATEST, name + '\n')
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith('epoch-'))
    for old in done[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def point_latest(output_dir, checkpoint) -> None:
    """Point ``output_dir``'s ``latest`` at ``checkpoint`` when that is one of its own checkpoints: a run resumed
    from an older one continues from there, and a crash before its next save must not send a later resume to
    the abandoned newer ones."""
    root = Path(output_dir) / 'checkpoints'
    checkpoint = Path(checkpoint)
    if checkpoint.parent.resolve() == root.resolve() and (root / LATEST).is_file():
        if (root / LATEST).read_text().strip() != checkpoint.name:
            atomic_write_text(root / LATEST, checkpoint.name + '\n')


def run_folder_of(checkpoint) -> Optional[Path]:
    """The run folder a checkpoint folder belongs to (``RUN/checkpoints/epoch-NNNN``); None for one outside a run."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == 'checkpoints' else None


def resolve_checkpoint(path) -> Path:
    """The checkpoint folder meant by ``path``: a run's output folder (its latest checkpoint),
    its ``checkpoints/`` folder, a checkpoint folder, or the ``model.safetensors`` in one.

    Raises:
        FileNotFoundError: none of these, or a ``latest`` that names a folder that is not there.
    """
    path = Path(path)
    for pointer in (path / 'checkpoints' / LATEST, path / LATEST):
        if pointer.is_file():
            name = pointer.read_text().strip()
            named = pointer.parent / name
            if not name or '/' in name or not named.is_dir():
                kept = sorted(p.name for p in pointer.parent.iterdir() if p.is_dir())
                what = f'names {name}, which is missing' if name else 'is empty'
                raise FileNotFoundError(f'{pointer} {what}: give one of the checkpoint folders that are there '
                                        f"({', '.join(kept) or 'none'}).")
            return named
    if path.is_file() and path.suffix == '.safetensors':
        path = path.parent
    if (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return path
    what = 'is not a checkpoint' if path.exists() else 'does not exist'
    raise FileNotFoundError(
        f'{path} {what}: expected a training output folder (with checkpoints/latest), a checkpoint folder holding '
        f'{MODEL_FILE} and {CONFIG_FILE}, or that {MODEL_FILE} (eval also takes local-dir:FOLDER and hf-hub:ID).')


STATE_KEYS = ('epoch', 'optimizer', 'scheduler', 'scaler', 'rng')  # what a resumed run reads of a state.pt


def load_training_state(checkpoint_dir) -> Dict[str, Any]:
    """The training state of a checkpoint folder (``torch.load(weights_only=True)``: no code runs).

    Raises:
        CheckpointError: no ``state.pt``, or one that cannot be read (truncated, not a training state).
    """
    path = Path(checkpoint_dir) / STATE_FILE
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f'{checkpoint_dir} holds no {STATE_FILE}: it is a model, not a training checkpoint to '
                              'resume from (start a new run from its weights with --backbone-init '
                              f'{Path(checkpoint_dir) / MODEL_FILE}).') from None
    except Exception as e:  # truncated zip, bad pickle: torch's errors name neither the file nor what to do
        raise _damaged(path, e) from e
    if not isinstance(state, dict) or 'epoch' not in state:
        raise CheckpointError(f'{path} is not a training state of timm-stra train; resume from a run folder it wrote.')
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f'{path} lacks {", ".join(missing)}: it is not a whole training state of timm-stra '
                              'train; resume from a run folder it wrote.')
    return state


def load_model(spec: str, **kwargs) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """A trained model and its data config from a checkpoint path, ``local-dir:`` or ``hf-hub:``.

    Args:
        spec: ``hf-hub:org/name``, ``local-dir:/folder`` or any path ``resolve_checkpoint`` accepts.
        kwargs: passed to ``timm.create_model``.
    """
    if not spec.startswith(('hf-hub:', 'local-dir:')):
        spec = 'local-dir:' + str(resolve_checkpoint(spec))
    if spec.startswith('local-dir:'):
        architecture = _read_config(Path(spec[len('local-dir:'):]) / CONFIG_FILE)['architecture']
        if not timm.is_model(architecture):
            raise CheckpointError(f'{spec}: its config.json names {architecture!r}, a model timm does not know: '
                                  'import the package that registers it first.')
    try:
        model = timm.create_model(spec, pretrained=True, **kwargs)
    except RuntimeError as e:  # hf-hub: timm reads the config itself, and its message is the only sign
        if 'Unknown model' not in str(e):
            raise
        raise CheckpointError(f'{spec}: its config.json names a model timm does not know ({e}): import the '
                              'package that registers it first.') from e
    return model, data_config_for(model)


def _read_config(path: Path) -> Dict[str, Any]:
    """The timm hub ``config.json`` at ``path``; ``CheckpointError`` unless it names an architecture (timm's own
    errors were a JSON traceback or a bare ``KeyError: 'architecture'``)."""
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise CheckpointError(f'{path.parent} holds no {CONFIG_FILE}: not a saved timm model folder.') from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f'{path} is not JSON ({e}): the folder is damaged; use another checkpoint, or write '
                              'it again.') from None
    if not isinstance(config, dict) or not isinstance(config.get('architecture'), str):
        raise CheckpointError(f'{path} names no architecture: not a timm hub config; use another checkpoint, or '
                              'write it again.')
    return config


def load_checkpoint_data_config(checkpoint_dir) -> Dict[str, Any]:
    """The preprocessing a checkpoint's run trained with (``input_size``, ``interpolation``, ``mean``, ``std``), as
    ``write_model_folder`` kept it in ``config.json``: a resumed run goes on with it (rebuilt without its
    ``--backbone-init`` tag, a model's own config could differ).

    Raises:
        CheckpointError: ``config.json`` is missing, not JSON, or without these values.
    """
    path = Path(checkpoint_dir) / CONFIG_FILE
    cfg = _read_config(path).get('pretrained_cfg')
    if not isinstance(cfg, dict) or any(cfg.get(k) is None for k in DATA_KEYS):
        raise CheckpointError(f'{path} gives no preprocessing (pretrained_cfg with {", ".join(DATA_KEYS)}): the '
                              'folder is damaged; use another checkpoint, or write it again.')
    return {'input_size': tuple(cfg['input_size']), 'interpolation': cfg['interpolation'],
            'mean': tuple(cfg['mean']), 'std': tuple(cfg['std'])}


def data_config_for(model: torch.nn.Module, input_size: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """timm data config of ``model`` with the channels it takes, and (H, W) replaced by ``input_size`` if given.

    timm's ``pretrained_cfg`` keeps the variant's input channels (its weights', which ``load_pretrained`` adapts
    to ``in_chans`` by them); timm's ``resolve_input_data_config`` gives a model built with another ``in_chans``
    its own, with the mean and std that follow (one value repeated, or three averaged for one channel).
    """
    cfg = dict(resolve_input_data_config(model))
    if input_size is not None:
        cfg['input_size'] = (cfg['input_size'][0], *input_size)
    return cfg


def load_checkpoint_weights(checkpoint_dir, device: Union[str, torch.device] = 'cpu') -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint folder (safetensors: no code runs), on ``device``.

    Raises:
        CheckpointError: ``model.safetensors`` is missing or cannot be read (cut short, not safetensors).
    """
    path = Path(checkpoint_dir) / MODEL_FILE
    try:
        return load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as e:
        raise _damaged(path, e) from e


def _damaged(path: Path, error: BaseException) -> CheckpointError:
    """The error for a checkpoint file that is there but cannot be read, with the first line of why."""
    found = blocked_globals(error)
    if found:  # torch's refusal, whose own advice (weights_only=False) would run the code
        return CheckpointError(f'{path}: refused. Its pickle would import or call {found} while loading, which '
                               'the state timm-stra train writes never does; nothing from it was run. It was not '
                               'written by timm-stra train as it is: resume from a run folder it wrote.')
    return CheckpointError(f'{path} cannot be read ({read_failure_reason(error)}): the checkpoint is damaged; '
                           'resume from an older one (checkpoints/epoch-NNNN).')
