"""Hub round trip: save_for_hf writes config.json + model.safetensors + model card; local-dir: and hf-hub:
rebuild the identical model (same state dict, same outputs), for every variant and non-default knobs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import timm
import timm_stra  # noqa: F401
from timm.models import save_for_hf as timm_save_for_hf
from timm_stra.hub import model_card, save_for_hf
from timm_stra.models import stra_resnet50_reid
from timm_stra.models.pretrained_errors import PretrainedWeightsError
from hub_cache import add_repo, use_offline_cache
from local_hub_server import LocalHub

ROOT = Path(__file__).resolve().parents[1]
PUSH = """
import sys, torch, timm, timm_stra
from safetensors.torch import save_file
from timm_stra.hub import push_to_hub
torch.manual_seed(0)
model = timm.create_model('stra_resnet50_fer', mode='no_interaction', num_classes=3)
save_file(model.state_dict(), sys.argv[1])
model = model.to(memory_format=torch.channels_last)  # as trained on a GPU: weights safetensors would refuse
print(push_to_hub(model, 'someone/stra-fer'))
assert not model.layer1[0].conv2.weight.is_contiguous()  # the model is left as it was
"""

CASES = [
    ('stra_resnet50', {}),
    ('stra_resnet50_reid', {}),
    ('stra_resnet50_face', {}),
    ('stra_resnet50_fer', {}),
    ('resnet50_reid', {}),
    ('resnet50_face', {}),
    ('resnet50_fer', {}),
    ('stra_resnet50_reid', dict(mode='no_interaction', groups=4, kernel_size=5, reduction=2, embed_dim=256,
                                num_classes=0)),
    ('stra_resnet50_face', dict(img_size=(128, 96), local_op='sasa')),
    ('stra_resnet50_fer', dict(local_op='group_conv', mode='none', num_classes=5)),
]


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random values for every float tensor (BN statistics included), so a default init cannot pass."""
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.9, 1.1) if tensor.dim() == 1 else tensor.normal_(0, 0.02)
    return model.eval()


def _input(model: torch.nn.Module) -> torch.Tensor:
    """One small image: the fixed size of face models, else 64x32 (CPU time, not coverage, decides)."""
    chans, height, width = model.pretrained_cfg['input_size']
    if not model.pretrained_cfg.get('fixed_input_size'):
        height, width = (32, 32) if chans == 1 else (64, 32)
    return torch.randn(1, chans, height, width)


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    x = _input(a)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize('name,kwargs', CASES, ids=[f'{n}-{"-".join(k) or "default"}' for n, k in CASES])
def test_save_and_reload_from_local_dir(tmp_path, name, kwargs):
    model = _randomise(timm.create_model(name, **kwargs))
    folder = save_for_hf(model, tmp_path / 'model')
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == name
    assert config['num_classes'] == model.num_classes
    for key, value in kwargs.items():
        assert config['model_args'][key] == (list(value) if isinstance(value, tuple) else value), key
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert reloaded.stra_args == model.stra_args
    _assert_same_model(model, reloaded)


def test_a_channels_last_model_is_saved_and_left_channels_last(tmp_path):
    """safetensors refuses non-contiguous tensors: timm's writer failed on a model run channels last."""
    model = _randomise(timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 1]))
    model = model.to(memory_format=torch.channels_last)
    folder = save_for_hf(model, tmp_path / 'model')
    assert not model.layer1[0].conv2.weight.is_contiguous()
    assert not all(t.is_contiguous() for t in model.state_dict().values())  # the writer's hook is gone
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True, layers=[1, 1, 1, 1]).eval()
    _assert_same_model(model, reloaded.to(memory_format=torch.channels_last))  # (the same sums, to the bit)


def test_reload_from_hf_hub_offline_cache(tmp_path, monkeypatch):
    model = _randomise(timm.create_model('stra_resnet50_reid', groups=4, num_classes=0))
    folder = save_for_hf(model, tmp_path / 'export', repo_id='someone/stra-reid')
    add_repo(tmp_path / 'hub', 'someone/stra-reid', {p.name: p.read_bytes() for p in folder.iterdir()})
    use_offline_cache(monkeypatch, tmp_path / 'hub')
    reloaded = timm.create_model('hf-hub:someone/stra-reid', pretrained=True).eval()
    assert reloaded.stra_args['groups'] == 4
    _assert_same_model(model, reloaded)


def test_push_to_hub_then_load_from_hf_hub(tmp_path, monkeypatch):
    """push_to_hub against a local Hub endpoint (HF_ENDPOINT, read when huggingface_hub is imported, hence the
    subprocess), then hf-hub: from a cache holding exactly the uploaded files."""
    reference = tmp_path / 'pushed.safetensors'
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    with LocalHub() as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN='hf_test', HF_HOME=str(tmp_path / 'home'),
                   HF_HUB_DISABLE_TELEMETRY='1', PYTHONPATH=str(ROOT),
                   NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost')  # the endpoint is local
        result = subprocess.run([sys.executable, '-c', PUSH, str(reference)], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.files['someone/stra-fer']
    assert sorted(files) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads(files['config.json'])
    assert config['architecture'] == 'stra_resnet50_fer' and config['num_classes'] == 3
    assert config['model_args']['mode'] == 'no_interaction'
    card = files['README.md'].decode()
    assert 'pip install timm-stra' in card and "timm.create_model('hf-hub:someone/stra-fer'" in card
    assert hub.readme_yaml_checked == card

    add_repo(tmp_path / 'hub', 'someone/stra-fer', files)
    use_offline_cache(monkeypatch, tmp_path / 'hub')
    pushed = timm.create_model('hf-hub:someone/stra-fer', pretrained=True).eval()
    original = timm.create_model('stra_resnet50_fer', mode='no_interaction', num_classes=3)
    original.load_state_dict(load_file(reference))
    _assert_same_model(original.eval(), pushed)


def test_timm_save_for_hf_records_the_knobs_too(tmp_path):
    """timm's own writer, on a model built by calling the entrypoint directly (not through create_model)."""
    model = _randomise(stra_resnet50_reid(local_op='group_conv', groups=16))
    timm_save_for_hf(model, tmp_path / 'timm', safe_serialization=True)
    config = json.loads((tmp_path / 'timm' / 'config.json').read_text())
    assert config['model_args']['local_op'] == 'group_conv' and config['model_args']['groups'] == 16
    _assert_same_model(model, timm.create_model(f'local-dir:{tmp_path / "timm"}', pretrained=True).eval())


def test_face_config_keeps_its_embedding(tmp_path):
    """The face head flattens: config.json must record global_pool='flatten' ('' would drop the neck on reload)."""
    save_for_hf(timm.create_model('stra_resnet50_face'), tmp_path / 'face')
    config = json.loads((tmp_path / 'face' / 'config.json').read_text())
    assert config['model_args']['global_pool'] == 'flatten' and config['global_pool'] == 'flatten'


def test_model_card(tmp_path):
    model = timm.create_model('stra_resnet50_reid', num_classes=0)
    readme = (save_for_hf(model, tmp_path / 'card', repo_id='someone/stra-reid') / 'README.md').read_text()
    for text in ('stra_resnet50_reid', '3x256x128', 'mean (0.485, 0.456, 0.406)', 'std (0.229, 0.224, 0.225)',
                 'pip install timm-stra', 'import timm_stra', "timm.create_model('hf-hub:someone/stra-reid'",
                 'arXiv:2106.06672', '512-D embedding', 'library_name: timm'):
        assert text in readme, text
    card = model_card(timm.create_model('resnet50_fer'))
    assert card['details']['Image size'] == '1x44x44' and 'twin' in card['description']


def test_model_card_describes_the_model_as_config_json_does(tmp_path):
    """The card's input and arguments are the model's as it is now (in_chans, a reset classifier), as timm's
    config.json records them, not the variant's defaults."""
    model = timm.create_model('stra_resnet50_reid', in_chans=1, layers=[1, 1, 1, 1])
    model.reset_classifier(10)
    folder = save_for_hf(model, tmp_path / 'grey')
    config = json.loads((folder / 'config.json').read_text())
    details = model_card(model)['details']
    assert details['Image size'] == 'x'.join(map(str, config['pretrained_cfg']['input_size'])) == '1x256x128'
    assert details['Normalisation'].startswith(f"mean {tuple(config['pretrained_cfg']['mean'])}")
    assert 'num_classes=10' in details['Model args'] and details['Output'] == '10 classes'


def test_existing_folder_is_refused_and_kept(tmp_path):
    target = tmp_path / 'taken'
    target.mkdir()
    (target / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='already exists'):
        save_for_hf(timm.create_model('resnet50_fer'), target)
    assert [p.name for p in target.iterdir()] == ['notes.txt']


def test_failed_save_leaves_nothing(tmp_path):
    model = timm.create_model('resnet50_fer')
    with pytest.raises(ValueError, match='not serializable'):
        save_for_hf(model, tmp_path / 'out' / 'model', model_args={'act_layer': torch.nn.ReLU})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_local_dir_weights_name_the_file(tmp_path):
    folder = save_for_hf(timm.create_model('resnet50_fer'), tmp_path / 'fer')
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PretrainedWeightsError, match='truncated or corrupt') as info:
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert str(weights) in str(info.value)


@pytest.mark.parametrize('zipped', [True, False])
@pytest.mark.parametrize('kept', [0.5, 20000])
def test_corrupt_pytorch_model_bin_names_the_file(tmp_path, zipped, kept):
    """timm's own save_for_hf writes pytorch_model.bin by default; local-dir: reads it. (Cut 20 kB in, inside a
    tensor's record, torch's error was a bare OSError "[Errno 22] Invalid argument".)"""
    model = timm.create_model('resnet50_fer')
    folder = tmp_path / 'fer'
    timm_save_for_hf(model, str(folder), safe_serialization=False)
    weights = folder / 'pytorch_model.bin'
    torch.save(model.state_dict(), weights, _use_new_zipfile_serialization=zipped)
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)  # whole, it loads
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    data = weights.read_bytes()
    weights.write_bytes(data[:int(len(data) * kept) if kept < 1 else kept])
    with pytest.raises(PretrainedWeightsError, match='truncated or corrupt') as info:
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert str(weights) in str(info.value)


def test_local_dir_of_other_arguments_is_a_clear_error(tmp_path):
    folder = save_for_hf(timm.create_model('stra_resnet50_reid', groups=4), tmp_path / 'g4')
    with pytest.raises(PretrainedWeightsError, match='a saved model built with other arguments') as info:
        timm.create_model(f'local-dir:{folder}', pretrained=True, groups=8)
    assert str(folder / 'model.safetensors') in str(info.value)


def test_local_dir_of_integer_weights_is_a_clear_error(tmp_path):
    """They loaded as whole numbers: every conv weight of a model saved in float32 and re-saved as int64 was 0."""
    model = timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 1])
    folder = save_for_hf(model, tmp_path / 'fer')
    weights = folder / 'model.safetensors'
    save_file({k: v.long() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}, str(weights))
    with pytest.raises(PretrainedWeightsError, match='integer tensors for floating-point ones or back .*conv1.weight '
                       'int64 vs float32'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_a_new_classifier_loads_everything_else_strictly(tmp_path):
    """With another num_classes timm drops the classifier and loads the rest leniently: a key the file lacks would
    keep its fresh initialisation silently. Only the classifier may differ."""
    saved = _randomise(timm.create_model('stra_resnet50_reid', layers=[1, 1, 1, 1], num_classes=0))
    folder = save_for_hf(saved, tmp_path / 'reid')
    tuned = timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=10)
    assert tuned.fc.out_features == 10
    ours = tuned.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in saved.state_dict().items())  # all but the new fc loaded
    grey = timm.create_model(f'local-dir:{folder}', pretrained=True, in_chans=1)  # timm adapts the first conv
    torch.testing.assert_close(grey.conv1.weight, saved.conv1.weight.sum(dim=1, keepdim=True))
    for kwargs, message in ((dict(local_op='conv'), 'keys the model does not have: layer4.0.conv2.local.score'),
                            (dict(groups=4), 'shapes that differ')):
        with pytest.raises(PretrainedWeightsError, match=f'built with other arguments than this one; .*{message}'):
            timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=10, **kwargs)


def test_architecture_arguments_given_as_numpy_numbers_are_saved_as_python_ones(tmp_path):
    """timm's writer refused them: "Model argument 'groups' is not serializable"."""
    np = pytest.importorskip('numpy')
    model = timm.create_model('stra_resnet50_fer', layers=np.array([1, 1, 1, 1]), groups=np.int64(4))
    folder = save_for_hf(model, tmp_path / 'fer')
    args = json.loads((folder / 'config.json').read_text())['model_args']
    assert args['groups'] == 4 and args['layers'] == [1, 1, 1, 1]
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
