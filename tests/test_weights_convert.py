"""timm-stra convert: the authors' torchreid checkpoint -> Hub-ready folder, safely and exactly.

The checkpoint is assembled from the manifest of the official model (every key and
shape), with random tensors and the shared parity operator in ``layer4.1.conv2``,
in the layout torchreid saves (legacy torch format, ``state_dict`` wrapper,
``module.`` prefixes, epoch, a NumPy ``rank1``, optimizer state).
"""
import json
import pickle
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import timm
import timm_stra
from timm_stra.cli import main as cli_main
from timm_stra.convert.cli import main as convert_main
from timm_stra.hub import save_for_hf

from code_pickle import RunsCode


def _official_state_dict(parity_dir: Path):
    shapes = json.loads((parity_dir / 'official_stra_resnet50_reid_keys.json').read_text())
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(1234)
        elif key.endswith('running_var'):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.05
    parity = load_file(parity_dir / 'official_stra_op_s1.safetensors')
    for key, value in parity.items():
        if key.startswith('weights.'):
            target = 'layer4.1.conv2.' + key[len('weights.'):]
            assert sd[target].shape == value.shape, target
            sd[target] = value
    return sd, parity


def _torchreid_checkpoint(state_dict):
    return {
        'state_dict': {'module.' + k: v for k, v in state_dict.items()},
        'epoch': 60,
        'rank1': np.float64(0.94),
        'optimizer': {'state': {0: {'exp_avg': torch.zeros(3)}}, 'param_groups': [{'lr': 3e-4, 'params': [0]}]},
    }


@pytest.fixture(scope='module')
def official(parity_dir, tmp_path_factory):
    """(checkpoint path, official state dict, parity vectors)."""
    sd, parity = _official_state_dict(parity_dir)
    path = tmp_path_factory.mktemp('official') / 'model.pth.tar'
    torch.save(_torchreid_checkpoint(sd), path, _use_new_zipfile_serialization=False)  # as torch 1.3 wrote it
    return path, sd, parity


def _leftovers(folder: Path):
    return [p.name for p in folder.iterdir()]


def test_convert_embedding_model_reproduces_the_parity_operator(official, tmp_path, capsys):
    checkpoint, sd, parity = official
    out = tmp_path / 'stra-reid'
    assert cli_main(['convert', str(checkpoint), str(out)]) == 0
    assert 'wrote' in capsys.readouterr().out
    assert sorted(_leftovers(out)) == ['README.md', 'config.json', 'model.safetensors']
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert model.pretrained_cfg['architecture'] == 'stra_resnet50_reid' and model.num_classes == 0
    torch.testing.assert_close(model.neck.fc.weight, sd['global_avg_pool.1.weight'].flatten(1), rtol=0, atol=0)
    torch.testing.assert_close(model.layer1[0].conv1.weight, sd['layer1.0.conv1.weight'], rtol=0, atol=0)

    operator = model.layer4[1].conv2
    with torch.no_grad():
        out_eval = operator(parity['input'])
    torch.testing.assert_close(out_eval, parity['output_eval'], rtol=0, atol=1e-5)
    operator.train()
    wrapper = torch.nn.Sequential(operator)
    out_train = wrapper(parity['input'])
    torch.testing.assert_close(out_train.detach(), parity['output_train'], rtol=0, atol=1e-5)
    torch.testing.assert_close(timm_stra.diversity_per_sample(wrapper).detach(), parity['diversity_train'],
                               rtol=0, atol=1e-5)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 32)).shape == (1, 512)
    readme = (out / 'README.md').read_text()  # the authors' repository states no licence for the weights
    assert 'license: other' in readme and "converted from the authors' released checkpoint" in readme
    # config.json says so too (it said apache-2.0): the model loaded from it, saved again, keeps the licence
    assert json.loads((out / 'config.json').read_text())['pretrained_cfg']['license'] == 'other'
    assert model.pretrained_cfg['license'] == 'other'
    save_for_hf(model, tmp_path / 'resaved')
    assert 'license: other' in (tmp_path / 'resaved' / 'README.md').read_text()
    # the file's BatchNorm step counters are kept, not replaced by the fresh model's zeros
    assert model.layer1[0].bn1.num_batches_tracked.item() == 1234


def test_checkpoint_pickled_under_numpy_1_converts(official, tmp_path):
    """The authors' checkpoint (2020) names NumPy's scalar constructor numpy.core.multiarray.scalar (NumPy 2:
    numpy._core.multiarray); the fixture, written here, is given that older name (plain text in its pickle)."""
    checkpoint, sd, _ = official
    data = checkpoint.read_bytes()
    older = data.replace(b'numpy._core.multiarray\nscalar', b'numpy.core.multiarray\nscalar')
    assert b'numpy.core.multiarray\nscalar' in older and b'numpy._core.multiarray\nscalar' not in older
    path = tmp_path / 'numpy1.pth.tar'
    path.write_bytes(older)
    out = tmp_path / 'stra-reid'
    assert cli_main(['convert', str(path), str(out)]) == 0
    converted = load_file(out / 'model.safetensors')
    assert torch.equal(converted['layer4.1.conv2.local.value.weight'], sd['layer4.1.conv2.value_conv.weight'])


def test_keep_classifier_keeps_the_751_ids(official, tmp_path):
    checkpoint, sd, _ = official
    out = tmp_path / 'with-ids'
    assert convert_main([str(checkpoint), str(out), '--keep-classifier']) == 0
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert model.num_classes == 751
    torch.testing.assert_close(model.fc.weight, sd['classifier.weight'], rtol=0, atol=0)
    assert json.loads((out / 'config.json').read_text())['num_classes'] == 751


def test_keep_classifier_of_a_file_without_one_is_refused(official, tmp_path, capsys):
    _, sd, _ = official
    checkpoint = tmp_path / 'no-ids.pth.tar'
    torch.save({'state_dict': {k: v for k, v in sd.items() if not k.startswith('classifier.')}}, checkpoint)
    out = tmp_path / 'out'
    assert convert_main([str(checkpoint), str(out), '--keep-classifier']) == 1
    err = capsys.readouterr().err
    assert f'{checkpoint}: has no ID classifier to keep; convert without --keep-classifier.' in err, err
    assert not out.exists()


def test_python_dash_m_entry_point(official, tmp_path, monkeypatch):
    """``python -m timm_stra.convert`` (run in this interpreter: a new one would spend seconds importing torch)."""
    checkpoint, _, _ = official
    out = tmp_path / 'via-m'
    monkeypatch.setattr(sys, 'argv', ['python -m timm_stra.convert', str(checkpoint), str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module('timm_stra.convert', run_name='__main__')
    assert exit_info.value.code == 0
    assert (out / 'model.safetensors').is_file()


def _assert_refused(checkpoint: Path, out: Path, capsys, *phrases: str):
    assert convert_main([str(checkpoint), str(out)]) == 1
    err = capsys.readouterr().err
    assert str(checkpoint) in err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f'.{out.name}')]  # no partial folder


def test_a_file_that_holds_no_state_dict_is_refused_as_such(tmp_path, capsys):
    """A list pickled with torch.save was 'truncated, corrupt or in another format': it is none of these."""
    checkpoint = tmp_path / 'a-list.pth.tar'
    torch.save([1, 2, 3], checkpoint)
    _assert_refused(checkpoint, tmp_path / 'out', capsys, 'holds no state dict (found list)')


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy-format', 'zip-format'])
def test_pickle_that_runs_code_is_refused(official, tmp_path, capsys, legacy):
    _, sd, _ = official
    marker = tmp_path / 'executed'
    checkpoint = tmp_path / 'evil.pth.tar'
    evil = dict(_torchreid_checkpoint({'conv1.weight': sd['conv1.weight']}), payload=RunsCode(marker))
    torch.save(evil, checkpoint, _use_new_zipfile_serialization=not legacy)
    _assert_refused(checkpoint, tmp_path / 'out', capsys, 'refused', 'system', 'nothing from it was run')
    assert not marker.exists()


def test_truncated_checkpoint(official, tmp_path, capsys):
    checkpoint, _, _ = official
    truncated = tmp_path / 'truncated.pth.tar'
    truncated.write_bytes(checkpoint.read_bytes()[:5_000_000])
    _assert_refused(truncated, tmp_path / 'out', capsys, 'truncated, corrupt')


@pytest.mark.parametrize('content, phrase', [
    (bytes(range(256)) * 20, 'truncated, corrupt or in another format (UnpicklingError: Unsupported operand'),
    (b'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>', 'is a web page (HTML)'),
], ids=['garbled', 'html-page'])
def test_unreadable_file_is_not_called_malicious(tmp_path, capsys, content, phrase):
    """timm words every refusal of the weights-only unpickler as one of pickle globals: a garbled file, or the
    page a failed download saved, is not code being refused."""
    checkpoint = tmp_path / 'model.pth.tar'
    checkpoint.write_bytes(content)
    _assert_refused(checkpoint, tmp_path / 'out', capsys, phrase)


def test_pickle_in_a_protocol_the_safe_loader_does_not_read_is_refused_naming_what_it_calls(tmp_path, capsys):
    """pickle.dump writes protocol 4 or 5, whose framing torch's weights-only unpickler stops at, before any
    global: the file is read as opcodes, never unpickled, to say what it would call."""
    marker = tmp_path / 'executed'
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(pickle.dumps({'state_dict': {}, 'payload': RunsCode(marker)}, protocol=4))
    _assert_refused(checkpoint, tmp_path / 'out', capsys, 'refused', 'protocol 4 or later', 'system',
                    'nothing from it was run')
    assert not marker.exists()


def test_corrupt_safetensors(tmp_path, capsys):
    bad = tmp_path / 'model.safetensors'
    bad.write_bytes(b'\xff' * 64)
    _assert_refused(bad, tmp_path / 'out', capsys, 'not a readable safetensors file')


def test_missing_checkpoint(tmp_path, capsys):
    _assert_refused(tmp_path / 'nowhere.pth.tar', tmp_path / 'out', capsys, 'does not exist')


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    checkpoint = tmp_path / 'resnet50.pth.tar'
    torch.save({'state_dict': timm.create_model('resnet50').state_dict()}, checkpoint)
    _assert_refused(checkpoint, tmp_path / 'out', capsys, 'no mapping for fc.weight, fc.bias. This is the state dict '
                    'of a plain ResNet-50 (its classifier is fc.*)')


def test_checkpoint_without_batchnorm_step_counters_converts(official, tmp_path):
    """Re-saved or stripped copies often lack num_batches_tracked: step counters, not weights."""
    _, sd, _ = official
    checkpoint = tmp_path / 'stripped.pth.tar'
    torch.save({'state_dict': {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}}, checkpoint)
    out = tmp_path / 'stra-reid'
    assert convert_main([str(checkpoint), str(out)]) == 0
    converted = load_file(out / 'model.safetensors')
    assert torch.equal(converted['layer4.1.conv2.local.value.weight'], sd['layer4.1.conv2.value_conv.weight'])


def test_checkpoint_of_the_plain_twin_is_not_called_the_release(official, tmp_path):
    """A checkpoint in the authors' layout with plain 3x3 convs in the last stage converts to the twin; its card
    does not claim the released StRA model's weights."""
    _, sd, _ = official
    twin = timm.create_model('resnet50_reid')
    plain = {k: v for k, v in sd.items() if not k.startswith('layer4.') or '.conv2.' not in k}
    plain.update({f'layer4.{i}.conv2.weight': twin.layer4[i].conv2.weight.detach() for i in range(3)})
    checkpoint = tmp_path / 'twin.pth.tar'
    torch.save({'state_dict': plain}, checkpoint)
    out = tmp_path / 'twin'
    assert convert_main([str(checkpoint), str(out)]) == 0
    readme = (out / 'README.md').read_text()
    assert 'resnet50_reid' in readme and 'plain 3x3 convolutions' in readme and '84.2 mAP' not in readme


def test_official_names_but_incomplete_model(official, tmp_path, capsys):
    _, sd, _ = official
    checkpoint = tmp_path / 'partial.pth.tar'
    torch.save({'state_dict': {k: v for k, v in sd.items() if not k.startswith('layer4.2.')}}, checkpoint)
    _assert_refused(checkpoint, tmp_path / 'out', capsys, 'not the official stra_resnet50_reid', 'layer4.2.')


def test_a_checkpoint_with_values_that_are_not_finite_is_refused(official, tmp_path, capsys):
    """It converted without a word, into a model that gives NaN for every image."""
    _, sd, _ = official
    checkpoint = tmp_path / 'diverged.pth.tar'
    value = 'layer4.1.conv2.value_conv.weight'
    broken = {**sd, value: torch.full_like(sd[value], float('nan'))}
    torch.save({'state_dict': broken}, checkpoint)
    _assert_refused(checkpoint, tmp_path / 'out', capsys,
                    'not finite (NaN or inf) in layer4.1.conv2.local.value.weight')


def test_output_folder_that_exists_is_not_touched(official, tmp_path, capsys):
    checkpoint, _, _ = official
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    assert convert_main([str(checkpoint), str(out)]) == 1
    assert 'already exists' in capsys.readouterr().err
    assert _leftovers(out) == ['keep.txt']


def test_output_folder_under_a_file_is_refused_before_reading(official, tmp_path, capsys):
    checkpoint, _, _ = official
    (tmp_path / 'a-file').write_text('x')
    assert convert_main([str(checkpoint), str(tmp_path / 'a-file' / 'out')]) == 1  # was a NotADirectoryError traceback
    assert 'a-file is a file, not a folder: choose an output folder elsewhere' in capsys.readouterr().err


def test_key_lists_in_messages_show_the_first_few_and_the_count():
    from timm_stra.listing import shown_list
    assert shown_list(['a', 'b']) == 'a, b'
    assert shown_list([f'k{i}' for i in range(9)], 3) == 'k0, k1, k2 ... (9 in all)'
    assert shown_list(iter(['x'] * 6)) == 'x, x, x, x, x, x'  # (any iterable; exactly the limit: no count)
