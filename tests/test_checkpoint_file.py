"""timm_stra.checkpoint_file.read_state_dict: a checkpoint without a state dict of tensors is refused, named."""
import re

import pytest
import torch

from timm_stra.checkpoint_file import CheckpointError, read_state_dict


def test_a_state_dict_of_tensors_is_read(tmp_path):
    path = tmp_path / 'ok.pth'
    torch.save({'state_dict': {'module.w': torch.ones(2)}}, path)
    state_dict = read_state_dict(path)
    assert list(state_dict) == ['w'] and torch.equal(state_dict['w'], torch.ones(2))


def test_an_empty_checkpoint_is_refused(tmp_path):
    """An empty dict would load into nothing (a non-strict load would not notice): refused, not passed on."""
    path = tmp_path / 'empty.pth'
    torch.save({}, path)
    with pytest.raises(CheckpointError, match=re.escape(f'{path}: holds no state dict')):
        read_state_dict(path)


def test_a_value_that_is_not_a_tensor_is_named(tmp_path):
    """A training checkpoint's bookkeeping saved flat beside the weights is not a state dict: the key is named."""
    path = tmp_path / 'mixed.pth'
    torch.save({'w': torch.ones(2), 'epoch': 3}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: not a state dict of tensors (e.g. 'epoch' is int).")):
        read_state_dict(path)
