"""``--backbone-init``: tags and weights files through timm's pretrained machinery, offline; clear errors.

The tags read stand-ins for timm's ``resnet50.tv_in1k`` / ``resnet50.a1_in1k`` of the small test depth
from a real-layout Hugging Face cache with ``HF_HUB_OFFLINE=1``.
"""

import pytest
import torch
from safetensors.torch import save_file

from code_pickle import RunsCode
from hub_cache import add_repo, imagenet_resnet50, safetensors_bytes, use_offline_cache
from timm_stra.tasks.backbone_init import BackboneInit, create_model, parse_backbone_init
from timm_stra.tasks.usage import UsageError

SMALL = dict(layers=[1, 1, 1, 1], num_classes=4)
BACKBONE = ('conv1.', 'bn1.', 'layer1.', 'layer2.', 'layer3.')


@pytest.fixture(scope='module')
def stand_ins(tmp_path_factory):
    """(cache folder, tv_in1k stand-in, a1_in1k stand-in), of one block per stage."""
    root = tmp_path_factory.mktemp('hf')
    cache = root / 'hub'
    tv, a1 = imagenet_resnet50(1, SMALL['layers']), imagenet_resnet50(2, SMALL['layers'])
    add_repo(cache, 'timm/resnet50.tv_in1k', {'model.safetensors': safetensors_bytes(tv, root / 'tv.safetensors')})
    add_repo(cache, 'timm/resnet50.a1_in1k', {'model.safetensors': safetensors_bytes(a1, root / 'a1.safetensors')})
    return cache, tv, a1


@pytest.fixture()
def hub(monkeypatch, stand_ins):
    use_offline_cache(monkeypatch, stand_ins[0])
    return stand_ins


def _assert_backbone_from(model, weights):
    ours = model.state_dict()
    keys = [k for k in weights if k.startswith(BACKBONE)]
    assert keys
    for key in keys:
        assert torch.equal(ours[key], weights[key]), key


@pytest.mark.parametrize('value,tag', [('tv_in1k', 'tv_in1k'), ('resnet50.tv_in1k', 'tv_in1k'),
                                       ('a1_in1k', 'a1_in1k'), ('stra_resnet50_reid.a1_in1k', 'a1_in1k')])
def test_tags_and_timm_weight_names(value, tag):
    init = parse_backbone_init(value, 'stra_resnet50_reid')
    assert init and init.tag == tag and not init.file


def test_empty_means_random_weights():
    init = parse_backbone_init('', 'stra_resnet50_reid')
    assert not init and init == BackboneInit()
    assert create_model('stra_resnet50_reid', init, **SMALL).fc.out_features == 4


@pytest.mark.parametrize('name', ['stra_resnet50_reid', 'resnet50_reid'])
def test_tag_loads_the_hub_weights_into_the_model_and_its_twin(hub, name, capsys):
    _, tv, a1 = hub
    model = create_model(name, parse_backbone_init('resnet50.tv_in1k', name), verbose=True, **SMALL)
    _assert_backbone_from(model, tv)
    err = capsys.readouterr().err
    assert f'{name}: loaded ' in err and f'initialised {name} from timm/resnet50.tv_in1k' in err
    _assert_backbone_from(create_model(name, parse_backbone_init('a1_in1k', name), **SMALL), a1)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_file_loads_into_the_model(tmp_path, suffix):
    weights = imagenet_resnet50(5, SMALL['layers'])
    path = tmp_path / f'r50{suffix}'
    save_file(weights, str(path)) if suffix == '.safetensors' else torch.save({'state_dict': weights}, path)
    init = parse_backbone_init(str(path), 'stra_resnet50_face')
    assert init.file == str(path)
    model = create_model('stra_resnet50_face', init, **SMALL)
    _assert_backbone_from(model, weights)
    assert model.pretrained_cfg['file'] == str(path)
    assert 'state_dict' not in model.pretrained_cfg  # loaded, not kept in the config


def test_file_whose_pickle_runs_code_is_refused_unrun(tmp_path):
    # read here with weights_only=True whatever timm's version (timm < 1.0.26 reads files without it)
    marker, path = tmp_path / 'executed', tmp_path / 'r50.pth'
    torch.save({**imagenet_resnet50(5, SMALL['layers']), 'payload': RunsCode(marker)}, path)
    with pytest.raises(UsageError, match=r'(?s)--backbone-init .*r50.pth.*refused.*system.*nothing from it was run'):
        create_model('stra_resnet50_reid', parse_backbone_init(str(path), 'stra_resnet50_reid'), **SMALL)
    assert not marker.exists()


def test_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / 'r50.safetensors'
    save_file(imagenet_resnet50(5), str(path))  # full depth
    with pytest.raises(UsageError, match=r"(?s)--backbone-init '.*r50.safetensors': Cannot initialise "
                                         r'stra_resnet50_reid from .*r50.safetensors: .*keys the model does not have'):
        create_model('stra_resnet50_reid', parse_backbone_init(str(path), 'stra_resnet50_reid'), **SMALL)


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / 'r50.safetensors'
    save_file(imagenet_resnet50(5, SMALL['layers']), str(path))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UsageError, match=r'(?s)r50.safetensors: .*truncated, corrupt.*a weights file'):
        create_model('stra_resnet50_reid', parse_backbone_init(str(path), 'stra_resnet50_reid'), **SMALL)


@pytest.mark.parametrize('value,why', [('missing.safetensors', 'does not exist'), ('./nowhere/w.pth', 'does not exist'),
                                       ('.', 'is a folder, not a weights file')])
def test_missing_file(value, why, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=f"--backbone-init {value}: {why}. .*tag of the model \\(tv_in1k, a1_in1k\\)"):
        parse_backbone_init(value, 'stra_resnet50_reid')


def test_hub_offline_with_nothing_cached(monkeypatch, tmp_path):
    use_offline_cache(monkeypatch, tmp_path / 'empty')
    with pytest.raises(UsageError, match=r"(?s)--backbone-init 'tv_in1k': .*not available.*timm/resnet50.tv_in1k.*"
                                         r"Connect to the Hugging Face Hub once.*or '' to start from random"):
        create_model('stra_resnet50_reid', parse_backbone_init('tv_in1k', 'stra_resnet50_reid'), **SMALL)


@pytest.mark.parametrize('value,text', [
    ('tv_in21k', "stra_resnet50_reid has no pretrained weights tagged 'tv_in21k'"),
    ('resnet101.tv_in1k', "'resnet101' is neither the model stra_resnet50_reid nor the resnet50 weights"),
])
def test_unknown_tag_lists_the_tags(value, text):
    with pytest.raises(UsageError, match=r'tag of the model \(tv_in1k, a1_in1k\)') as e:
        parse_backbone_init(value, 'stra_resnet50_reid')
    assert text in str(e.value)


@pytest.mark.parametrize('name', ['stra_resnet50_fer', 'resnet50_fer'])
def test_fer_models_have_no_imagenet_tag(name):
    with pytest.raises(UsageError, match=f"{name} has no pretrained weights to start from \\(it trains from "
                                         "scratch\\). Give --backbone-init a weights file of the model's "):
        parse_backbone_init('resnet50.tv_in1k', name)


def test_fer_refuses_an_imagenet_file(tmp_path):
    path = tmp_path / 'r50.safetensors'
    save_file(imagenet_resnet50(5, SMALL['layers']), str(path))
    with pytest.raises(UsageError, match='Cannot initialise stra_resnet50_fer from .*not an ImageNet ResNet-50'):
        create_model('stra_resnet50_fer', parse_backbone_init(str(path), 'stra_resnet50_fer'), **SMALL)


def test_saved_models_are_refused():
    with pytest.raises(UsageError, match="a saved model brings its own architecture.*or --backbone-init ''"):
        parse_backbone_init('tv_in1k', 'local-dir:/somewhere/run')
