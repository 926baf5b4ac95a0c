"""Test helpers: a Hugging Face Hub cache in the real on-disk layout, used offline.

``huggingface_hub`` reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into its
``constants`` module when it is imported, so ``use_offline_cache`` sets both the
environment variables (for subprocesses) and those constants (for this process).
Nothing of the library is mocked: ``hf_hub_download`` resolves ``refs/main`` and the
snapshot symlinks exactly as it does for a real cache.
"""
import hashlib
import os
from pathlib import Path
from typing import Dict, Sequence

import pytest
import timm
import torch
from safetensors.torch import save_file

REVISION = 'c0ffee' + '0' * 34


def add_repo(cache: Path, repo_id: str, files: Dict[str, bytes], revision: str = REVISION) -> Path:
    """Store ``files`` (name -> content) as ``repo_id`` at ``revision``; returns the snapshot folder.

    Layout: ``models--<owner>--<name>/{blobs/<sha256>, snapshots/<revision>/<name> -> ../../blobs/<sha256>,
    refs/main}``.
    """
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    snapshot = repo / 'snapshots' / revision
    (repo / 'blobs').mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / 'refs').mkdir(exist_ok=True)
    (repo / 'refs' / 'main').write_text(revision)
    for name, content in files.items():
        digest = hashlib.sha256(content).hexdigest()
        (repo / 'blobs' / digest).write_bytes(content)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path('..', '..', 'blobs', digest))
    return snapshot


def imagenet_resnet50(seed: int, layers: Sequence[int] = (3, 4, 6, 3)) -> Dict[str, torch.Tensor]:
    """Stand-in for timm's ``resnet50.*`` ImageNet weights, as a timm ResNet-50 state dict of depth ``layers``.

    timm's own initialisation plus seeded noise, so every tensor differs from a freshly built
    model's yet the network still trains (positive running variances); no ``num_batches_tracked``,
    like timm's hub files.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in timm.create_model('resnet50', layers=list(layers)).state_dict().items():
        if not key.endswith('num_batches_tracked'):
            noise = 0.1 * torch.randn(value.shape, generator=gen)
            out[key] = value + (noise.abs() if key.endswith('running_var') else noise)
    return out


def safetensors_bytes(state_dict: Dict[str, torch.Tensor], path: Path) -> bytes:
    """Serialise a state dict with safetensors (through ``path``) and return the bytes."""
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def use_offline_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Point huggingface_hub at ``cache`` with ``HF_HUB_OFFLINE=1`` for the rest of the test."""
    import huggingface_hub.constants as constants
    monkeypatch.setenv('HF_HOME', str(cache.parent))
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(constants, 'HF_HOME', str(cache.parent))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    assert os.environ['HF_HUB_OFFLINE'] == '1'
