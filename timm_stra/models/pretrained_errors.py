"""Clear errors for ``pretrained=True``: a variant without weights, or a weight file that cannot be read.

timm's loaders surface low-level errors (a safetensors header error, a hub cache
miss) that name neither the model nor the file. ``pretrained_read_errors`` turns
them, and the filter's ``IncompatibleWeightsError`` (another architecture), into a
``PretrainedWeightsError`` that says which file, what is wrong and what to do.
"""
import contextlib
import errno
import pickle
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from timm.models import resolve_pretrained_cfg

from .imagenet_init import IncompatibleWeightsError

_SOURCES = ('hf_hub_id', 'url', 'file', 'state_dict')


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights for a timm-stra model could not be found or read."""


def _resolve(variant: str, pretrained_cfg: Any, overlay: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay).to_dict()


def check_has_weights(variant: str, pretrained_cfg: Any, overlay: Optional[Dict[str, Any]]) -> None:
    """Raise ``PretrainedWeightsError`` for ``pretrained=True`` on a config without any weight source.

    The FER variants have none on purpose: the paper trains them from scratch, and their
    network (1-channel 3x3 stem without max-pool, 3 blocks per stage, 512-channel StRA
    stage) shares too little with an ImageNet ResNet-50 for a meaningful initialisation.
    """
    cfg = _resolve(variant, pretrained_cfg, overlay)
    if any(cfg.get(k) for k in _SOURCES):
        return
    why = (' The FER models are trained from scratch (as in the paper): their small 1-channel stem and '
           '3-block stages do not match an ImageNet ResNet-50.' if variant.endswith('_fer') else '')
    raise PretrainedWeightsError(
        f'{variant} has no pretrained weights{"" if not cfg.get("tag") else " for tag " + repr(cfg["tag"])}.'
        f'{why} Build it with pretrained=False, or load a saved model with '
        f"timm.create_model('local-dir:<folder>', pretrained=True) or 'hf-hub:<repo>'.")


def _describe_source(cfg: Dict[str, Any], cache_dir: Optional[str]) -> str:
    """Where the weights of ``cfg`` are read from: a file path when it can be known without the network."""
    if cfg.get('source') == 'local-dir' and cfg.get('file'):
        folder = Path(cfg['file'])
        files = [folder / n for n in ('model.safetensors', 'pytorch_model.bin') if (folder / n).exists()]
        return str(files[0]) if files else f'the folder {folder}'
    if cfg.get('file'):  # a file overlay takes precedence over the hub in timm's load_pretrained
        return str(cfg['file'])
    hub_id = cfg.get('hf_hub_id')
    if hub_id:
        from huggingface_hub import try_to_load_from_cache
        repo, _, revision = hub_id.partition('@')
        names = [cfg['hf_hub_filename']] if cfg.get('hf_hub_filename') else ['model.safetensors', 'pytorch_model.bin']
        for filename in names:
            cached = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision or None)
            if isinstance(cached, str):
                return cached
        return f'{names[0]} of the Hugging Face Hub repo {hub_id}'
    return str(cfg.get('file') or cfg.get('url') or 'the pretrained source')


# what torch.load says of a truncated or corrupt file (zip checkpoints; the legacy format)
_CORRUPT = ('PytorchStreamReader failed', 'might be corrupted', 'Invalid magic number', 'unexpected EOF')


@contextlib.contextmanager
def pretrained_read_errors(
        variant: str,
        pretrained: bool,
        pretrained_cfg: Any,
        overlay: Optional[Dict[str, Any]],
        cache_dir: Optional[str] = None,
) -> Iterator[None]:
    """Re-raise unreadable or unreachable weight files as ``PretrainedWeightsError`` naming the file."""
    if not pretrained:
        yield
        return
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    from safetensors import SafetensorError
    try:
        yield
    except SafetensorError as e:
        where = _describe_source(_resolve(variant, pretrained_cfg, overlay), cache_dir)
        raise PretrainedWeightsError(
            f'Cannot read the pretrained weights of {variant} from {where}: the safetensors file is truncated or '
            f'corrupt ({e}). Delete it and download or export it again.') from e
    except IncompatibleWeightsError as e:
        where = _describe_source(_resolve(variant, pretrained_cfg, overlay), cache_dir)
        raise PretrainedWeightsError(f'Cannot initialise {variant} from {where}: it is {e}') from e
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
        text = str(e)
        # the weights_only=True refusal of a global: timm's (from 1.0.31 on: a RuntimeError) or torch's own (torch
        # says 'Weights only load failed' of any pickle its unpickler cannot read, corrupt ones included)
        refused = 'pickle globals' in text or 'Unsupported global' in text
        corrupt = not refused and (not isinstance(e, RuntimeError) or any(s in text for s in _CORRUPT))
        if not (refused or corrupt) and 'Error(s) in loading state_dict' not in text:
            raise
        where = _describe_source(_resolve(variant, pretrained_cfg, overlay), cache_dir)
        if corrupt:
            raise PretrainedWeightsError(
                f'Cannot read the pretrained weights of {variant} from {where}: the file is truncated or corrupt '
                f'({type(e).__name__}: {text[:200]}). Delete it and download or export it again.') from e
        if refused:
            raise PretrainedWeightsError(
                f'Refused the pretrained weights of {variant} in {where}: loading its pickle would import or call '
                'code, which a weight file never needs; nothing from it was run. Use a safetensors file.') from e
        raise PretrainedWeightsError(
            f'The weights in {where} do not fit {variant} as built here (another architecture or other '
            f'arguments): {str(e)[:600]}') from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError) as e:
        cfg = _resolve(variant, pretrained_cfg, overlay)
        state = 'is missing'
        if cfg.get('source') == 'local-dir':
            todo = 'Check the folder: it needs model.safetensors beside config.json.'
        elif cfg.get('file'):
            todo = 'Check the path of the weights file.'
        else:
            state = 'is not in the local Hugging Face cache, and the Hub could not be reached (or is switched off)'
            todo = ('Connect to the Hugging Face Hub once to download them, or set HF_HUB_CACHE to a cache that '
                    'has them.')
        raise PretrainedWeightsError(
            f'The pretrained weights of {variant} are not available: {_describe_source(cfg, cache_dir)} {state}'
            f'{f" ({e})" if str(e) else ""}. {todo}') from e
    except OSError as e:
        if isinstance(e, ConnectionError):  # (the hub's offline errors are caught above)
            raise
        # torch.load of a pickle cut inside a tensor's record seeks past the file's end: a bare "[Errno 22] Invalid
        # argument" naming no file
        where = _describe_source(_resolve(variant, pretrained_cfg, overlay), cache_dir)
        if e.errno in (None, errno.EINVAL):
            cause, todo = 'the file is truncated or corrupt', 'Delete it and download or export it again.'
        else:
            cause, todo = 'the file cannot be read', 'Check the file.'
        raise PretrainedWeightsError(
            f'Cannot read the pretrained weights of {variant} from {where}: {cause} ({type(e).__name__}: {e}). '
            f'{todo}') from e
