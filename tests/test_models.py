"""The registered models: variants, twins, knobs and timm behaviour beyond timm's own suite."""
import re

import numpy as np
import pytest
import timm
import torch
from timm.models.resnet import Bottleneck

import timm_stra  # noqa: F401
from timm_stra.models import StRABottleneck
from timm_stra.tools.summary import stra_model_names

EXPECTED = {  # name: (input size, forward_features shape, embedding width with num_classes=0)
    'stra_resnet50': ((3, 224, 224), (2048, 7, 7), 2048),
    'stra_resnet50_reid': ((3, 256, 128), (2048, 16, 8), 512),
    'stra_resnet50_face': ((3, 112, 112), (2048, 4, 4), 512),
    'stra_resnet50_fer': ((1, 44, 44), (512, 6, 6), 512),
    'resnet50_reid': ((3, 256, 128), (2048, 16, 8), 512),
    'resnet50_face': ((3, 112, 112), (2048, 4, 4), 512),
    'resnet50_fer': ((1, 44, 44), (2048, 6, 6), 2048),
}


def test_registry_lists_exactly_our_models():
    assert sorted(stra_model_names()) == sorted(EXPECTED)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_variant_shapes_and_embedding(name):
    input_size, feat_shape, embed = EXPECTED[name]
    model = timm.create_model(name, num_classes=0).eval()
    assert model.pretrained_cfg['input_size'] == input_size
    assert model.pretrained_cfg['pool_size'] == feat_shape[1:]
    x = torch.randn(2, *input_size)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, *feat_shape)
        out = model(x)
        assert out.shape == (2, embed)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), out)


def test_stra_blocks_only_in_last_stage_and_twin_is_plain():
    stra = timm.create_model('stra_resnet50_reid')
    twin = timm.create_model('resnet50_reid')
    assert all(isinstance(b, StRABottleneck) for b in stra.layer4)
    assert all(isinstance(b, Bottleneck) for stage in (stra.layer1, stra.layer2, stra.layer3) for b in stage)
    assert all(type(b) is Bottleneck for b in twin.layer4)
    # the twin shares every name of timm's resnet50 except the head
    ours = set(twin.state_dict())
    timm_names = set(timm.create_model('resnet50').state_dict())
    assert ours - timm_names == {k for k in ours if k.startswith('neck.')}
    assert timm_names - ours == set()


def test_reid_keeps_last_stride_one_without_dilation():
    model = timm.create_model('stra_resnet50_reid')
    assert model.layer4[0].conv2.local.stride == 1 and model.layer4[0].downsample[0].stride == (1, 1)
    assert model.feature_info[-1] == dict(num_chs=2048, reduction=16, module='layer4')


def test_fer_small_stem_and_unfused_blocks():
    model = timm.create_model('stra_resnet50_fer')
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert [len(getattr(model, f'layer{i}')) for i in range(1, 5)] == [3, 3, 3, 3]
    assert all(isinstance(b.conv3, torch.nn.Identity) for b in model.layer4)
    assert [f['reduction'] for f in model.feature_info] == [1, 1, 2, 4, 8]
    assert model.fc.in_features == 512 and model.num_classes == 7


def test_face_head_is_bn_dropout_fc_bn():
    neck = timm.create_model('stra_resnet50_face').neck
    assert [type(m).__name__ for m in neck.children()] == ['BatchNorm2d', 'Dropout', 'Linear', 'BatchNorm1d']
    assert neck.fc.in_features == 2048 * 4 * 4 and neck.fc.out_features == 512


def test_face_other_size_and_clear_error_for_wrong_size():
    model = timm.create_model('stra_resnet50_face', img_size=(224, 192)).eval()
    assert model.pretrained_cfg['input_size'] == (3, 224, 192)
    assert model.pretrained_cfg['pool_size'] == (7, 6)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 192)).shape == (1, 512)
    small = timm.create_model('stra_resnet50_face').eval()
    with pytest.raises(ValueError, match=r"takes 112x112 images only.*img_size=\(224, 192\)"):
        small(torch.randn(1, 3, 224, 192))
    with pytest.raises(ValueError, match=r"takes 112x112 input images"):  # the neck, given another map
        small.forward_head(torch.randn(1, 2048, 3, 3))


@pytest.mark.parametrize('size', [(128, 128), (100, 100), (112, 100)])
def test_face_refuses_sizes_that_give_a_map_of_its_shape(size):
    """97-128 pixels all give a 4x4 map at stride 32, laid out differently from 112's: refused (as timm's
    fixed-size models do), in eager mode, scripted and through timm's fx feature extraction (where an unused
    check would be dead code)."""
    from timm.models import create_feature_extractor
    model = timm.create_model('stra_resnet50_face', layers=[1, 1, 1, 1]).eval()
    x = torch.randn(1, 3, *size)
    assert model.forward_features(x).shape[-2:] == (4, 4)  # features of any size, as for every timm model
    for run in (model, torch.jit.script(model), create_feature_extractor(model, return_nodes=['fc'])):
        with pytest.raises((ValueError, torch.jit.Error), match=r'takes 112x112 images only'):
            run(x)


def test_face_pruned_head_has_no_classifier_to_reset():
    model = timm.create_model('stra_resnet50_face', layers=[1, 1, 1, 1]).eval()
    model.prune_intermediate_layers()
    with pytest.raises(ValueError, match='head was pruned'):
        model.reset_classifier(5, 'flatten')
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 112, 112)).shape == (1, 2048, 4, 4)


def test_knobs_pass_through_create_model():
    model = timm.create_model('stra_resnet50_reid', local_op='sasa', mode='no_interaction', groups=4)
    op = model.layer4[1].conv2
    assert type(op.local).__name__ == 'SelfAttention2d' and op.mode.groups == 4 and not op.mode.interaction
    assert model.stra_args == dict(local_op='sasa', mode='no_interaction', groups=4, kernel_size=3, reduction=4,
                                  reference=False, recompute=True)
    model = timm.create_model('stra_resnet50', kernel_size=5, mode='none')
    assert model.layer4[0].conv2.local.kernel_size == 5 and isinstance(model.layer4[0].conv2.mode, torch.nn.Identity)


def test_bad_model_arguments():
    with pytest.raises(TypeError, match='only apply to StRA models'):
        timm.create_model('resnet50_reid', local_op='local')
    with pytest.raises(TypeError, match="img_size sizes the 'face' head only"):  # (it was ignored)
        timm.create_model('stra_resnet50_reid', img_size=(384, 128))
    with pytest.raises(ValueError, match='2048 channels cannot be split|512 channels cannot be split'):
        timm.create_model('stra_resnet50_reid', groups=7)
    with pytest.raises(ValueError, match="Unknown local_op 'deform'"):
        timm.create_model('stra_resnet50_reid', local_op='deform')
    # the output stride the stem and last stride give is accepted; another is refused (timm's would dilate)
    for name, stride, other in (('stra_resnet50', 32, 16), ('resnet50_reid', 16, 32), ('stra_resnet50_fer', 8, 4)):
        assert timm.create_model(name, output_stride=stride, device='meta').feature_info[-1]['reduction'] == stride
        for wrong in (other, 8 if stride != 8 else 16):
            with pytest.raises(ValueError, match=re.escape(
                    f'output_stride={wrong}: these ResNets do not dilate; their output stride is set by the stem and '
                    f'the last stage stride: {stride} with last_stride=')) as e:
                timm.create_model(name, output_stride=wrong, device='meta')
            assert f'{other} with last_stride=' in str(e.value)
    with pytest.raises(TypeError):
        timm.create_model('stra_resnet50_reid', not_an_argument=1)
    # a stage too many was ignored, one too few or an empty one failed in the forward with a shape error
    for layers in ((3, 4, 6, 3, 3), (3, 4, 6), (3, 4, 6, 0)):
        with pytest.raises(ValueError, match=re.escape(f'layers={layers}: give the blocks of the four stages')):
            timm.create_model('stra_resnet50', layers=layers, device='meta')
    for size in ((112, 112, 3), 0, (112, -8)):  # (a bare assert in timm, or a negative-size tensor)
        with pytest.raises(ValueError, match=re.escape(f'img_size={size!r}: give the input size as an int or')):
            timm.create_model('stra_resnet50_face', img_size=size, device='meta')
    # NumPy's integers are integers (a size read from an array)
    model = timm.create_model('stra_resnet50_face', img_size=np.int64(96), layers=np.array([1, 1, 1, 1]), device='meta')
    assert model.img_size == (96, 96) and model.pretrained_cfg['input_size'] == (3, 96, 96)


def test_unpooled_output_and_reset_classifier():
    model = timm.create_model('stra_resnet50_reid', num_classes=0, global_pool='').eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 32)).shape == (1, 2048, 4, 2)
    model.reset_classifier(10, 'avg')
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 32)).shape == (1, 10)
    assert model.get_classifier().in_features == 512


@pytest.mark.parametrize('name', ['stra_resnet50', 'stra_resnet50_reid', 'resnet50_reid'])
def test_reset_classifier_keeps_the_current_pooling_as_timm_does(name):
    model = timm.create_model(name, num_classes=0, global_pool='', layers=[1, 1, 1, 1]).eval()
    model.reset_classifier(0)
    resnet = timm.create_model('resnet50', num_classes=0, global_pool='', layers=[1, 1, 1, 1]).eval()
    resnet.reset_classifier(0)
    with torch.no_grad():  # still the feature map (the ReID models' last stride is 1: a larger one)
        out, ref = model(torch.randn(1, 3, 64, 32)), resnet(torch.randn(1, 3, 64, 32))
    assert out.ndim == ref.ndim == 4 and out.shape[1] == ref.shape[1] == 2048


def test_reset_classifier_after_the_head_was_pruned():
    model = timm.create_model('stra_resnet50_reid', layers=[1, 1, 1, 1]).eval()
    model.prune_intermediate_layers(1, prune_head=True)  # the neck goes with the head
    model.reset_classifier(10, 'avg')
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32)).shape == (2, 10)
    assert model.head_hidden_size == model.num_features == model.get_classifier().in_features


def test_reset_classifier_builds_on_the_models_device_and_dtype():
    model = timm.create_model('stra_resnet50_reid', layers=[1, 1, 1, 1], device='meta').to(torch.bfloat16)
    model.reset_classifier(10)
    fc = model.get_classifier()
    assert fc.weight.device.type == 'meta' and fc.weight.dtype == fc.bias.dtype == torch.bfloat16


def test_a_refused_pooling_leaves_the_head_as_it_was():
    model = timm.create_model('stra_resnet50_reid', num_classes=5, layers=[1, 1, 1, 1]).eval()
    fc, pool = model.get_classifier(), model.global_pool
    with pytest.raises(ValueError, match="global_pool='catavgmax' gives 2x"):
        model.reset_classifier(7, 'catavgmax')
    assert model.get_classifier() is fc and model.global_pool is pool and model.num_classes == 5
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32)).shape == (2, 5)


def test_features_only_and_intermediates():
    model = timm.create_model('stra_resnet50_reid', features_only=True, out_indices=(2, 3, 4)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 32))
    assert [f.shape[1:] for f in feats] == [(512, 8, 4), (1024, 4, 2), (2048, 4, 2)]
    assert model.feature_info.reduction() == [8, 16, 16]


@pytest.mark.parametrize('out_indices', [(5,), (0, -6), 6, 0])
def test_feature_levels_the_models_lack_are_a_clear_error(out_indices):
    """timm's error was a bare IndexError: list index out of range."""
    with pytest.raises(ValueError, match=r'these models have 5 feature levels \(the stem and four stages\)'):
        timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 1], features_only=True, out_indices=out_indices)
    model = timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 1], features_only=True, out_indices=(0, -1))
    assert model.feature_info.channels() == [64, 512]


def test_gradient_checkpointing_matches():
    """Checkpointed blocks run their forward again in backward (counted as they start: the recomputation stops
    early, once it has what backward needs), with the same output and gradients."""
    model = timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 2]).train()
    calls = []
    for name in ('layer1.0', 'layer4.0', 'layer4.1'):
        model.get_submodule(name).register_forward_pre_hook(lambda module, args, name=name: calls.append(name))
    x = torch.randn(2, 1, 44, 44)
    results = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        calls.clear()
        out = model(x)
        out.sum().backward()
        assert sorted(calls) == sorted(['layer1.0', 'layer4.0', 'layer4.1'] * (2 if checkpointing else 1))
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out, grads), (out_ckpt, grads_ckpt) = results
    torch.testing.assert_close(out_ckpt, out, rtol=1e-4, atol=1e-5)
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-3, atol=1e-4, msg=n)


def test_models_table_names_a_filter_that_matches_nothing(capsys):
    from timm_stra.tools.summary import main as models_main
    assert models_main(['--filter', 'resnet50']) == 1  # timm's own model, not one of ours
    err = capsys.readouterr().err
    assert "no timm-stra model matches 'resnet50'" in err and 'stra_resnet50_reid' in err
    assert models_main(['--filter', 'stra_resnet50_fer']) == 0
    assert '| stra_resnet50_fer |' in capsys.readouterr().out


def test_models_table_counts_the_same_on_meta_as_on_the_cpu():
    """`timm-stra models` builds on the meta device (shapes only): the same counts, without the arithmetic."""
    from timm_stra.tools.summary import describe
    assert describe('stra_resnet50_fer') == describe('stra_resnet50_fer', device='cpu')


def test_models_table_counts_as_the_ablation_table_does():
    """`timm-stra models` and `timm-stra table` gave three GMACs figures for one model (torch's raw flop count of
    the implementation's products, beside the table's two): it is the table's "all products", plus the classifier."""
    from timm_stra.benchmarks.ablation import measure_row
    from timm_stra.benchmarks.rows import PAPER_ROWS
    from timm_stra.tools.summary import describe
    row = next(r for r in PAPER_ROWS if r.label == 'Local + Mode (StRA)')
    described, measured = describe(row.model), measure_row(row)
    classifier = timm.create_model(row.model, device='meta').get_classifier()
    assert described['GMACs'] == pytest.approx(measured['gmacs_total'] + classifier.weight.numel() / 1e9, rel=1e-9)
    assert described['params w/o classifier (M)'] == pytest.approx(measured['params_m'], rel=1e-9)


@pytest.mark.parametrize('name', ['stra_resnet50_reid', 'stra_resnet50_face'])
def test_fx_extractor_that_stops_early_runs_only_what_it_returns(name):
    """The shape checks must not pull the rest of the network into a truncated graph (fx keeps what a kept node
    depends on); a face extractor that stops before the head takes any input size, as forward_features does."""
    from timm.models import create_feature_extractor
    model = timm.create_model(name, layers=[1, 1, 1, 1]).eval()
    extractor = create_feature_extractor(model, return_nodes=['layer1'])
    called = [str(n.target) for n in extractor.graph.nodes if n.op in ('call_module', 'call_function')]
    assert not [t for t in called if t.startswith(('layer2', 'layer3', 'layer4', 'neck', 'fc'))], called
    assert extractor(torch.randn(1, 3, 128, 96))['layer1'].shape == (1, 256, 32, 24)


def test_output_cut_short_by_its_reader_is_not_a_traceback():
    """`timm-stra models | head`: the reader stops early, as pipes do."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, '-m', 'timm_stra.cli', 'models', '--no-progress', '--filter',
                             'stra_resnet50_fer'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the table is printed (the models take seconds to build)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1 and 'Traceback' not in err, err


def test_usage_cut_short_by_its_reader_ends_without_a_traceback():
    """`timm-stra --help | true`: the reader is gone before the first write (its end of the pipe is closed
    before the command starts), so the write fails; the command ends quietly with status 1."""
    import os
    import subprocess
    import sys
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, '-m', 'timm_stra.cli', '--help'], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 1 and 'Traceback' not in done.stderr, done.stderr


@pytest.mark.parametrize('name, kwargs', [
    ('stra_resnet50_reid', {}),
    ('stra_resnet50_face', {}),
    ('stra_resnet50_fer', {}),
    ('stra_resnet50_reid', {'reference': True}),
    ('stra_resnet50_reid', {'local_op': 'sasa', 'mode': 'no_interaction'}),
])
def test_plain_torch_fx_traces_and_the_traced_model_keeps_its_diversity_term(name, kwargs):
    """``torch.fx.symbolic_trace`` (not only timm's tracer) traces the models: the traced graph gives the model's
    output and, in training, the same diversity term (the recorders are called, not traced through)."""
    from timm_stra import diversity_loss
    model = timm.create_model(name, layers=[1, 1, 1, 1], **kwargs).train()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *model.pretrained_cfg['input_size'])
    torch.manual_seed(0)  # (the face head's dropout)
    out, term = model(x), diversity_loss(model)
    torch.manual_seed(0)
    torch.testing.assert_close(traced(x), out)
    torch.testing.assert_close(diversity_loss(traced), term)
    assert term.requires_grad and term > 0


def test_torchvision_feature_extraction_takes_the_models():
    """torchvision's ``create_feature_extractor`` (its own tracer, in train and eval mode) on a face model: the
    neck's embedding, the face size check kept, and in training the diversity term of the eager model."""
    from timm_stra import diversity_loss
    from torchvision.models.feature_extraction import create_feature_extractor
    model = timm.create_model('stra_resnet50_face', layers=[1, 1, 1, 1]).eval()
    extractor = create_feature_extractor(model, return_nodes={'layer4': 'map', 'neck': 'embedding'})
    x = torch.randn(2, 3, 112, 112)
    features = extractor(x)
    assert features['map'].shape == (2, 2048, 4, 4)
    torch.testing.assert_close(features['embedding'], model(x))  # (a face model's output is its embedding)
    with pytest.raises(ValueError, match='takes 112x112 images only'):
        extractor(torch.randn(2, 3, 96, 96))
    extractor.train(), model.train()
    torch.manual_seed(0)
    extractor(x)
    term = diversity_loss(extractor)
    torch.manual_seed(0)
    model(x)
    torch.testing.assert_close(term, diversity_loss(model))
    assert term.requires_grad and term > 0


def test_an_fx_traced_recorder_on_its_own_is_an_identity():
    """The diversity recorder traced as the root (nothing to name it in) or called in an fx graph pass (a tracer
    without a module tree) stays an identity that keeps nothing, as before it recorded calls of itself."""
    from timm_stra.layers.diversity import DiversityRecorder
    masks = torch.softmax(torch.randn(2, 4, 9), -1).view(2, 4, 3, 3)
    root = DiversityRecorder().train()
    assert torch.equal(torch.fx.symbolic_trace(root)(masks), masks) and not root.kept
    graph = torch.fx.Graph()
    recorder = DiversityRecorder().train()
    graph.output(recorder(torch.fx.Proxy(graph.placeholder('masks'))).node)
    assert torch.equal(torch.fx.GraphModule(torch.nn.Module(), graph)(masks), masks) and not recorder.kept


def test_face_neck_drops_out_after_its_batchnorm():
    """SPEC 2: BN2d, then Dropout (ArcFace's "E" output): in training the dropout sees the normalised map and the
    FC what the dropout let through."""
    from timm_stra.models.heads import FaceNeck
    neck = FaceNeck(8, (2, 2), (64, 64), embed_dim=4, drop_rate=0.5).train()
    seen = {}
    for name in ('norm_in', 'drop', 'fc'):
        getattr(neck, name).register_forward_hook(lambda m, inp, out, name=name: seen.update({name: (inp[0], out)}))
    neck(torch.randn(3, 8, 2, 2) * 5 + 3)
    assert torch.equal(seen['drop'][0], seen['norm_in'][1])
    assert torch.equal(seen['fc'][0], seen['drop'][1].flatten(1))
    assert (seen['drop'][1] == 0).any()  # (the dropout was on)


def test_face_embedding_has_only_the_necks_dropout():
    """The face head's drop_rate is its neck's dropout, before the FC: nothing drops out of the embedding itself
    (a second dropout after the neck's BN1d) in training."""
    model = timm.create_model('stra_resnet50_face', layers=[1, 1, 1, 1], num_classes=0).train()
    assert model.neck.drop.p == 0.4
    features = torch.randn(2, 2048, 4, 4)
    torch.manual_seed(0)
    embedding = model.forward_head(features)
    torch.manual_seed(0)
    expected = model.neck(features)
    assert torch.equal(embedding, expected) and (embedding != 0).all()


def _drop_path_rates(model):
    return [b.drop_path.drop_prob if b.drop_path is not None else 0.
            for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]


@pytest.mark.parametrize('name', ['stra_resnet50', 'resnet50_reid'])
def test_drop_path_rates_decay_over_the_blocks_as_in_timms_resnet50(name):
    """Stochastic depth grows linearly over all 16 blocks, as in timm's resnet50 (the last stage is built apart
    from the first three, whose rates must still be those of the full network)."""
    ours = _drop_path_rates(timm.create_model(name, drop_path_rate=0.1, device='meta'))
    theirs = _drop_path_rates(timm.create_model('resnet50', drop_path_rate=0.1, device='meta'))
    assert len(ours) == len(theirs) == 16 and theirs[-1] == pytest.approx(0.1) and theirs[0] == 0
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_last_stage_starts_as_its_shortcuts_like_timms_resnet50():
    """zero_init_last (timm's default): every block's last BN scale is zero, those of the rebuilt last stage too;
    zero_init_last=False leaves them at one."""
    model = timm.create_model('stra_resnet50')
    assert all(torch.equal(b.bn3.weight, torch.zeros(2048)) for b in model.layer4)
    assert all(torch.equal(b.bn3.weight, torch.zeros_like(b.bn3.weight)) for b in model.layer3)
    kept = timm.create_model('stra_resnet50', zero_init_last=False)
    assert all(torch.equal(b.bn3.weight, torch.ones(2048)) for b in kept.layer4)
