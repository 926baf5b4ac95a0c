"""Save and publish timm-stra models in timm's Hugging Face Hub format, with a model card.

Both functions use timm's own writers (``timm.models.save_for_hf`` and
``timm.models.push_to_hf_hub``): ``config.json`` holds the architecture,
``num_classes`` and, under ``model_args``, every constructor argument the model was
built with (``local_op``, ``mode``, ``groups``, ``img_size``, ...), which timm passes
back when it rebuilds the model from ``hf-hub:<repo>`` or ``local-dir:<folder>``.
The weights go to ``model.safetensors`` (as contiguous tensors whatever the model's memory format: safetensors
refuses the channels-last weights of a model run in that layout); ``README.md`` is the model card.
"""
import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import torch
from torch import nn
from timm.models import push_to_hf_hub
from timm.models import save_for_hf as timm_save_for_hf
from timm.data.model_config import resolve_input_data_config  # what save_for_hf writes to config.json
from timm.models._hub import generate_readme, get_model_args  # push_to_hf_hub's card writer; config.json's args

from .atomic import atomic_output_dir

CITATION = """@article{zhang2021stra,
  title={Structure-Regularized Attention for Deformable Object Representation},
  author={Zhang, Shenao and Shen, Li and Li, Zhifeng and Liu, Wei},
  journal={arXiv preprint arXiv:2106.06672},
  year={2021}
}"""


@contextlib.contextmanager
def contiguous_state_dict(model: nn.Module) -> Iterator[nn.Module]:
    """Within: ``model.state_dict()`` holds contiguous tensors (copies of the others), so that timm's writers can
    save a model whose weights are channels last (safetensors refuses non-contiguous tensors); the model itself
    is untouched, and so is its state dict afterwards."""
    def contiguous(module: nn.Module, state_dict: Dict[str, Any], prefix: str, local_metadata: Dict) -> None:
        for key, value in state_dict.items():
            if isinstance(value, torch.Tensor) and not value.is_contiguous():
                state_dict[key] = value.contiguous()

    handle = model.register_state_dict_post_hook(contiguous)
    try:
        yield model
    finally:
        handle.remove()


def _task(model: nn.Module) -> str:
    return 'image-classification' if getattr(model, 'num_classes', 0) else 'image-feature-extraction'


def _description(model: nn.Module, name: str) -> str:
    if getattr(model, 'stra_args', None):
        what = 'a ResNet-50 whose last stage uses Structure-Regularized Attention (StRA, arXiv 2106.06672)'
    else:
        what = 'the plain ResNet-50 twin (baseline) of the StRA model of the same task (arXiv 2106.06672)'
    return f'A {name} model: {what}, for timm with the timm-stra plugin.'


def model_card(model: nn.Module, repo_id: Optional[str] = None, weights: Optional[str] = None,
               license: Optional[str] = None) -> Dict[str, Any]:
    """The model card of ``model`` as the dict timm's ``generate_readme`` takes.

    Its arguments, input size and normalisation are those ``config.json`` records (the model as it is now:
    ``in_chans``, a reset classifier).

    Args:
        model: a timm-stra model (built by ``timm.create_model``).
        repo_id: Hub repo the card is for; the usage example loads from it
            (from ``local-dir:<this folder>`` when None).
        weights: one sentence on where the weights come from.
        license: the weights' licence identifier (default: the pretrained config's, else apache-2.0).
    """
    cfg = model.pretrained_cfg
    name = cfg['architecture']
    source = f"hf-hub:{repo_id}" if repo_id else 'local-dir:<this folder>'
    args = get_model_args(model)
    data = resolve_input_data_config(model)
    details = {
        'Model type': 'image classification' if model.num_classes else 'image feature extraction (embedding)',
        'Architecture': f'{name} (timm-stra)',
        'Model args': ', '.join(f'{k}={v!r}' for k, v in sorted(args.items())) or 'defaults',
        'Params (M)': round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        'Image size': 'x'.join(map(str, data['input_size'])),
        'Normalisation': f"mean {tuple(data['mean'])}, std {tuple(round(s, 4) for s in data['std'])}",
        'Output': f'{model.num_classes} classes' if model.num_classes else f'{model.head_hidden_size}-D embedding',
        'Papers': {'Structure-Regularized Attention for Deformable Object Representation':
                   'https://arxiv.org/abs/2106.06672'},
        'Original': cfg.get('origin_url') or 'https://github.com/shenao-zhang/StRA',
    }
    if weights:
        details['Weights'] = weights
    usage = (
        'This model needs the timm-stra plugin, which registers its architecture with timm:\n\n'
        '```bash\npip install timm-stra\n```\n\n'
        '```python\n'
        'import timm\n'
        'import timm_stra  # registers the StRA models with timm: import it before loading\n\n'
        f"model = timm.create_model('{source}', pretrained=True).eval()\n"
        'data_config = timm.data.resolve_model_data_config(model)\n'
        'transform = timm.data.create_transform(**data_config, is_training=False)\n'
        '```\n')
    return {
        'tags': [_task(model), 'timm', 'timm-stra'],
        'license': license or cfg.get('license', 'apache-2.0'),
        'description': _description(model, name),
        'details': details,
        'usage': usage,
        'citation': CITATION,
    }


def _python_number(value: Any) -> Any:
    """A NumPy number or array as Python's numbers and lists, which JSON records, also inside a list or tuple
    (``layers``, ``img_size``); None where there is none."""
    if isinstance(value, (list, tuple)):
        plain = [_python_number(v) for v in value]
        return None if all(v is None for v in plain) else [v if p is None else p for v, p in zip(value, plain)]
    if type(value).__module__.split('.')[0] == 'numpy' and hasattr(value, 'tolist'):
        return value.tolist()
    return None


def _writer_kwargs(model: nn.Module, kwargs: Dict[str, Any], license: Optional[str]) -> Dict[str, Any]:
    """timm's writer arguments with ``license`` in ``config.json``'s ``pretrained_cfg`` too, as on the card (a model
    loaded from the folder, and saved or published again, keeps it), and the model's architecture arguments given
    as NumPy numbers (``groups=np.int64(4)``) recorded as Python's: timm refused them as "not serializable"."""
    recorded = get_model_args(model)  # (what timm writes: drop rates left out)
    plain = {k: p for k, p in ((k, _python_number(v)) for k, v in recorded.items()) if p is not None}
    if plain:
        kwargs = {**kwargs, 'model_args': {**plain, **(kwargs.get('model_args') or {})}}
    if not license:
        return kwargs
    model_config = dict(kwargs.get('model_config') or {})
    model_config['pretrained_cfg'] = {**model_config.get('pretrained_cfg', {}), 'license': license}
    return {**kwargs, 'model_config': model_config}


def save_for_hf(
        model: nn.Module,
        save_directory: Union[str, Path],
        repo_id: Optional[str] = None,
        weights: Optional[str] = None,
        license: Optional[str] = None,
        **kwargs,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` (model card) to a new folder.

    The folder is written beside its final place and renamed into place when
    complete; on error nothing is left. ``kwargs`` go to ``timm.models.save_for_hf``
    (``model_config``, ``model_args``, ``data_config``). ``license`` (default: the model's
    ``pretrained_cfg``'s, else apache-2.0) goes on the card and into ``config.json``. Load it back with
    ``timm.create_model('local-dir:<folder>', pretrained=True)``.

    Returns:
        The folder.
    """
    save_directory = Path(save_directory)
    with atomic_output_dir(save_directory) as tmp, contiguous_state_dict(model):
        timm_save_for_hf(model, tmp, safe_serialization=True, **_writer_kwargs(model, kwargs, license))
        readme = generate_readme(model_card(model, repo_id, weights, license), save_directory.name,
                                 task_name=_task(model))
        (tmp / 'README.md').write_text(readme, encoding='utf-8')
    return save_directory


def push_to_hub(model: nn.Module, repo_id: str, weights: Optional[str] = None, license: Optional[str] = None,
                **kwargs):
    """Publish ``model`` to the Hugging Face Hub with timm's ``push_to_hf_hub`` and the timm-stra model card.

    Writes the same files as ``save_for_hf`` (safetensors only), but for the model card: timm writes
    ``README.md`` only into a repo that has none, so publishing again keeps the card it has. ``kwargs`` go to
    ``push_to_hf_hub`` (``token``, ``private``, ``revision``, ``commit_message``, ...).
    Load it with ``timm.create_model('hf-hub:<repo_id>', pretrained=True)`` after ``import timm_stra``.
    """
    kwargs.setdefault('safe_serialization', True)
    with contiguous_state_dict(model):
        return push_to_hf_hub(
            model, repo_id, model_card=model_card(model, repo_id, weights, license), task_name=_task(model),
            **_writer_kwargs(model, kwargs, license))
