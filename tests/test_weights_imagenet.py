"""pretrained=True: ImageNet ResNet-50 initialisation through timm's pretrained machinery, offline.

A stand-in for timm's ``resnet50.tv_in1k`` / ``resnet50.a1_in1k`` (random weights of
timm's ResNet-50) sits in a real-layout Hugging Face cache; ``HF_HUB_OFFLINE=1``.
"""
import logging
import re

import pytest
import torch
from safetensors.torch import save_file

import timm
import timm_stra  # noqa: F401
from timm_stra.models.pretrained_errors import PretrainedWeightsError
from code_pickle import RunsCode
from hub_cache import add_repo, imagenet_resnet50, safetensors_bytes, use_offline_cache

BACKBONE = ('conv1.', 'bn1.', 'layer1.', 'layer2.', 'layer3.')


@pytest.fixture(scope='module')
def imagenet_files(tmp_path_factory):
    """(cache folder, tv_in1k stand-in, a1_in1k stand-in)."""
    root = tmp_path_factory.mktemp('hf')
    cache = root / 'hub'
    tv, a1 = imagenet_resnet50(1), imagenet_resnet50(2)
    add_repo(cache, 'timm/resnet50.tv_in1k', {'model.safetensors': safetensors_bytes(tv, root / 'tv.safetensors')})
    add_repo(cache, 'timm/resnet50.a1_in1k', {'model.safetensors': safetensors_bytes(a1, root / 'a1.safetensors')})
    return cache, tv, a1


@pytest.fixture()
def hub(monkeypatch, imagenet_files):
    cache, tv, a1 = imagenet_files
    use_offline_cache(monkeypatch, cache)
    return imagenet_files


@pytest.mark.parametrize('name', ['stra_resnet50_reid', 'stra_resnet50', 'stra_resnet50_face'])
def test_stra_stem_and_stages_1_to_3_equal_the_file(hub, name):
    _, tv, _ = hub
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=True)
    ours = model.state_dict()
    backbone = [k for k in tv if k.startswith(BACKBONE)]
    assert len(backbone) == 215  # every stem and stage 1-3 tensor (BN counters aside)
    for key in backbone:
        assert torch.equal(ours[key], tv[key]), key
    # the last stage's non-operator parts load too; the replaced 3x3 convs do not exist any more
    assert torch.equal(ours['layer4.0.conv1.weight'], tv['layer4.0.conv1.weight'])
    assert 'layer4.0.conv2.weight' not in ours
    # the operators start fresh: as the same model built without weights from the same seed (timm's init)
    torch.manual_seed(0)
    fresh = timm.create_model(name).state_dict()
    operators = [k for k in ours if k.startswith('layer4.') and '.conv2.' in k]
    assert len(operators) > 100
    for key in operators:
        assert torch.equal(ours[key], fresh[key]), key


@pytest.mark.parametrize('name', ['resnet50_reid', 'resnet50_face'])
def test_twins_load_every_backbone_tensor(hub, name):
    _, tv, _ = hub
    ours = timm.create_model(name, pretrained=True).state_dict()
    shared = [k for k in tv if not k.startswith('fc.')]
    assert set(shared) <= set(ours)
    for key in shared:
        assert torch.equal(ours[key], tv[key]), key
    fresh = {k for k in ours if k not in tv and not k.endswith('num_batches_tracked')}
    assert fresh and fresh == {k for k in fresh if k.startswith(('neck.', 'fc.'))}  # only the task head is fresh


def test_default_tag_is_tv_in1k_and_a1_in1k_loads_its_own_file(hub):
    _, tv, a1 = hub
    default = timm.create_model('stra_resnet50_reid', pretrained=True)
    assert default.pretrained_cfg['tag'] == 'tv_in1k'
    assert default.pretrained_cfg['hf_hub_id'] == 'timm/resnet50.tv_in1k'
    rsb = timm.create_model('stra_resnet50_reid.a1_in1k', pretrained=True)
    assert torch.equal(rsb.state_dict()['layer3.5.conv3.weight'], a1['layer3.5.conv3.weight'])
    assert torch.equal(default.state_dict()['layer3.5.conv3.weight'], tv['layer3.5.conv3.weight'])


def test_classifier_loads_only_when_it_is_the_1000_way_one(hub):
    _, tv, _ = hub
    imagenet = timm.create_model('stra_resnet50', pretrained=True).state_dict()
    assert torch.equal(imagenet['fc.weight'], tv['fc.weight'])
    reid = timm.create_model('stra_resnet50_reid', pretrained=True)
    assert reid.fc.weight.shape == (751, 512)
    embedding = timm.create_model('stra_resnet50_reid', pretrained=True, num_classes=0)
    assert not any(k.startswith('fc.') for k in embedding.state_dict())


def test_one_log_line_counts_loaded_and_fresh_groups(hub, caplog):
    with caplog.at_level(logging.INFO, logger='timm_stra'):
        timm.create_model('stra_resnet50_reid', pretrained=True)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith('timm_stra')]
    assert len(lines) == 1
    assert 'stra_resnet50_reid: loaded 262 ImageNet ResNet-50 tensors, dropped 5 (replaced 3x3 convs: 3, ' \
           "the file's classifier: 2)" in lines[0]
    for group in ('StRA operators (117 tensors)', 'neck (6 tensors)', 'classifier (2 tensors)'):
        assert group in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='timm_stra'):  # the twin keeps its 3x3 convs: only the fc is dropped
        timm.create_model('resnet50_reid', pretrained=True)
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith('timm_stra')]
    assert "dropped 2 (the file's classifier: 2)" in line


def test_a_classifier_timm_drops_for_its_classes_is_logged_as_fresh(tmp_path, caplog):
    """timm's load_pretrained drops a file's classifier for a model of other classes than its config's (1000),
    even one of the model's shape: the line said it loaded it (nothing fresh)."""
    source = timm.create_model('stra_resnet50', num_classes=3, layers=[1, 1, 1, 1])
    path = tmp_path / 'three_classes.safetensors'
    save_file(source.state_dict(), str(path))
    with caplog.at_level(logging.INFO, logger='timm_stra'):
        model = timm.create_model('stra_resnet50', num_classes=3, layers=[1, 1, 1, 1], pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith('timm_stra')]
    assert "dropped 2 (the file's classifier: 2); freshly initialised: classifier (2 tensors)" in line, line
    assert not torch.equal(model.fc.weight, source.fc.weight)
    assert torch.equal(model.layer4[0].conv2.local.value.weight, source.layer4[0].conv2.local.value.weight)


def test_conv_ablation_keeps_the_3x3_convs(hub):
    _, tv, _ = hub
    ours = timm.create_model('stra_resnet50_reid', pretrained=True, local_op='conv').state_dict()
    for i in range(3):
        assert torch.equal(ours[f'layer4.{i}.conv2.local.weight'], tv[f'layer4.{i}.conv2.weight'])


def test_in_chans_adapted_by_timm(hub):
    _, tv, _ = hub
    model = timm.create_model('stra_resnet50_reid', pretrained=True, in_chans=1)
    torch.testing.assert_close(model.conv1.weight, tv['conv1.weight'].sum(1, keepdim=True))


def test_fer_has_no_imagenet_initialisation(hub):
    with pytest.raises(PretrainedWeightsError, match='stra_resnet50_fer has no pretrained weights.*from scratch'):
        timm.create_model('stra_resnet50_fer', pretrained=True)
    with pytest.raises(PretrainedWeightsError, match='resnet50_fer has no pretrained weights'):
        timm.create_model('resnet50_fer', pretrained=True)


def test_fer_forced_onto_the_imagenet_file_is_refused(hub):
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model('resnet50_fer', pretrained=True,
                          pretrained_cfg_overlay=dict(hf_hub_id='timm/resnet50.tv_in1k'))
    message = str(info.value)
    assert 'conv1.weight (64, 3, 7, 7) vs (64, 1, 3, 3)' in message
    assert 'keys the model does not have: layer2.3.bn1.bias' in message  # FER stages have 3 blocks
    assert 'lacks' not in message


def test_another_architecture_is_refused(monkeypatch, tmp_path):
    cache = tmp_path / 'hub'
    resnet18 = {k: v for k, v in timm.create_model('resnet18').state_dict().items()}
    snapshot = add_repo(cache, 'timm/resnet50.tv_in1k',
                        {'model.safetensors': safetensors_bytes(resnet18, tmp_path / 'r18.safetensors')})
    use_offline_cache(monkeypatch, cache)
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model('stra_resnet50_reid', pretrained=True)
    message = str(info.value)
    assert str(snapshot / 'model.safetensors') in message
    assert 'not an ImageNet ResNet-50' in message and 'layer1.0.conv3.weight' in message


def test_an_extra_key_is_refused_not_ignored(monkeypatch, tmp_path, imagenet_files):
    _, tv, _ = imagenet_files
    cache = tmp_path / 'hub'
    extra = dict(tv, **{'layer3.6.conv1.weight': torch.zeros(256, 1024, 1, 1)})
    add_repo(cache, 'timm/resnet50.tv_in1k', {'model.safetensors': safetensors_bytes(extra, tmp_path / 'x.st')})
    use_offline_cache(monkeypatch, cache)
    with pytest.raises(PretrainedWeightsError, match='keys the model does not have: layer3.6.conv1.weight'):
        timm.create_model('resnet50_reid', pretrained=True)


def test_truncated_file_names_the_file(monkeypatch, tmp_path, imagenet_files):
    cache, _, _ = imagenet_files
    good = (cache / 'models--timm--resnet50.tv_in1k' / 'snapshots').glob('*/model.safetensors')
    data = next(good).read_bytes()
    broken = tmp_path / 'hub'
    snapshot = add_repo(broken, 'timm/resnet50.tv_in1k', {'model.safetensors': data[:len(data) // 3]})
    use_offline_cache(monkeypatch, broken)
    with pytest.raises(PretrainedWeightsError, match='truncated or corrupt') as info:
        timm.create_model('stra_resnet50_reid', pretrained=True)
    assert str(snapshot / 'model.safetensors') in str(info.value)


def test_missing_file_says_what_to_do(monkeypatch, tmp_path):
    use_offline_cache(monkeypatch, tmp_path / 'empty')
    with pytest.raises(PretrainedWeightsError, match='timm/resnet50.tv_in1k is not in the local Hugging Face cache, '
                                                     'and the Hub could not be reached.*HF_HUB_CACHE'):
        timm.create_model('stra_resnet50_reid', pretrained=True)


def test_pickle_that_runs_code_is_refused(monkeypatch, tmp_path):
    """Only a pytorch_model.bin in the cache: timm reads it with weights_only=True, which must refuse it."""
    marker = tmp_path / 'executed'
    evil = tmp_path / 'evil.bin'
    torch.save({'conv1.weight': torch.zeros(1), 'payload': RunsCode(marker)}, evil)
    snapshot = add_repo(tmp_path / 'hub', 'timm/resnet50.tv_in1k', {'pytorch_model.bin': evil.read_bytes()})
    use_offline_cache(monkeypatch, tmp_path / 'hub')
    with pytest.raises(PretrainedWeightsError, match='Refused.*nothing from it was run') as info:
        timm.create_model('stra_resnet50_reid', pretrained=True)
    assert str(snapshot / 'pytorch_model.bin') in str(info.value)
    assert not marker.exists()


def test_file_overlay_is_the_file_named_in_errors(hub, tmp_path):
    missing = tmp_path / 'nowhere.safetensors'
    message = f'{missing} is missing. Check the path of the weights file.'
    with pytest.raises(PretrainedWeightsError, match=re.escape(message)):
        timm.create_model('stra_resnet50_reid', pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))
    small = tmp_path / 'small.safetensors'
    save_file(imagenet_resnet50(3, layers=(1, 1, 1, 1)), str(small))  # the hub file (full depth) is not read
    message = re.escape(f'Cannot initialise stra_resnet50_reid from {small}: ') + '.*lacks'
    with pytest.raises(PretrainedWeightsError, match=message):
        timm.create_model('stra_resnet50_reid', pretrained=True, pretrained_cfg_overlay=dict(file=str(small)))


def test_a_saved_model_loads_by_file_only_if_its_operators_and_neck_fit(tmp_path):
    saved = timm.create_model('stra_resnet50_reid', layers=[1, 1, 1, 1])
    path = tmp_path / 'saved.safetensors'
    save_file(saved.state_dict(), str(path))
    overlay = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), layers=[1, 1, 1, 1])
    same = timm.create_model('stra_resnet50_reid', **overlay)
    for key, value in saved.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key
    # built with other arguments: the operators (or the neck) do not fit, which is said, not half-loaded
    with pytest.raises(PretrainedWeightsError, match=r'shapes that differ \(file vs model\): layer4\.0\.conv2\.'):
        timm.create_model('stra_resnet50_reid', groups=4, **overlay)
    with pytest.raises(PretrainedWeightsError, match=r'shapes that differ \(file vs model\): neck\.'):
        timm.create_model('stra_resnet50_reid', embed_dim=256, **overlay)


def test_a_saved_model_without_batchnorm_counters_still_loads(tmp_path):
    """BatchNorm step counters (num_batches_tracked) are not weights: a saved model (local-dir:) whose file lacks
    them loads all the same; the rest must still fit key for key."""
    from safetensors.torch import load_file
    from timm_stra.hub import save_for_hf
    saved = timm.create_model('stra_resnet50_reid', layers=[1, 1, 1, 1])
    folder = save_for_hf(saved, tmp_path / 'model')
    weights = load_file(str(folder / 'model.safetensors'))
    stripped = {k: v for k, v in weights.items() if not k.endswith('num_batches_tracked')}
    assert len(stripped) < len(weights)
    save_file(stripped, str(folder / 'model.safetensors'))
    model = timm.create_model(f'local-dir:{folder}', pretrained=True, layers=[1, 1, 1, 1])
    ours = model.state_dict()
    for key, value in stripped.items():
        assert torch.equal(ours[key], value), key
    del stripped['neck.fc.weight']  # a weight, unlike a counter, may not be missing
    save_file(stripped, str(folder / 'model.safetensors'))
    with pytest.raises(PretrainedWeightsError, match='model keys the file lacks: neck.fc.weight'):
        timm.create_model(f'local-dir:{folder}', pretrained=True, layers=[1, 1, 1, 1])
