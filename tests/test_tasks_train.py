"""End to end from the command line on tiny data in the real formats: train, resume, evaluate, bad data.

Models are the registered ones, shrunk for 2 CPU cores with ``layers=[1,1,1,1]`` and small inputs.
"""
import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from code_pickle import RunsCode
from hub_cache import add_repo, imagenet_resnet50, safetensors_bytes, use_offline_cache
from synthetic import one_thread_fixture, face_bin_bytes, make_face_folders, make_fer2013, make_market1501
import timm_stra.atomic
from timm_stra.hub import save_for_hf
from timm_stra.tasks import checkpoint as ckpt_mod
from timm_stra.tasks.checkpoint import load_training_state, resolve_checkpoint, save_checkpoint
from timm_stra.tasks.evaluate import main as eval_main
from timm_stra.tasks.train import main as train_main, seed_all

one_thread = pytest.fixture(autouse=True)(one_thread_fixture)
FAST = ['--workers', '0', '--no-progress', '--batch-size', '8', '--model-kwargs', 'layers=[1,1,1,1]']




def _refused(capsys, main, argv, message) -> str:
    """Run ``main(argv)``, asserting it exits 1 with ``message`` and no traceback on stderr; the stderr."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, err
    return err


def _jsonl(run: Path):
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


def _weights(run: Path, epoch: int):
    return load_file(str(run / 'checkpoints' / f'epoch-{epoch:04d}' / 'model.safetensors'))


@pytest.fixture(scope='module')
def fer_csv(tmp_path_factory):
    return make_fer2013(tmp_path_factory.mktemp('fer') / 'fer2013.csv', per_class=(6, 2, 2))


def test_fer_trains_and_resumes_to_the_same_state(tmp_path, fer_csv, capsys):
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--eval-interval', '1', *FAST]
    full, part = tmp_path / 'full', tmp_path / 'part'
    assert train_main([*args, '--output', str(full), '--epochs', '2']) == 0
    assert train_main([*args, '--output', str(part), '--epochs', '1']) == 0
    with (part / 'metrics.jsonl').open('a') as f:
        f.write('{"epoch": 2, "lo')  # a crash while the next epoch's line was appended
    assert train_main([*args, '--output', str(part), '--epochs', '2', '--resume', str(part)]) == 0

    log = _jsonl(full)
    assert [r['epoch'] for r in log] == [1, 2]
    assert log[1]['ce'] < log[0]['ce']  # it learns
    assert {'public_test_top1', 'private_test_top1', 'div', 'lr'} <= set(log[1])
    resumed = _jsonl(part)
    for a, b in zip(log, resumed):
        assert {k: v for k, v in a.items() if k != 'time_s'} == {k: v for k, v in b.items() if k != 'time_s'}
    a, b = _weights(full, 2), _weights(part, 2)
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    sa, sb = (load_training_state(run / 'checkpoints' / 'epoch-0002') for run in (full, part))
    assert sa['epoch'] == sb['epoch'] == 2
    assert torch.equal(sa['rng'][0]['torch'], sb['rng'][0]['torch'])
    # a csv without test rows leaves nothing to evaluate: an error, not an empty table
    lines = fer_csv.read_text().splitlines()
    train_only = tmp_path / 'train-only.csv'
    train_only.write_text('\n'.join([lines[0], *(line for line in lines[1:] if line.endswith(',Training'))]) + '\n')
    capsys.readouterr()
    assert eval_main(['fer', '--data', str(train_only), '--model', str(full), '--workers', '0', '--no-progress']) == 1
    assert f'no PublicTest or PrivateTest rows to evaluate on in {train_only}' in capsys.readouterr().err


def test_resuming_an_older_checkpoint_points_latest_at_it(tmp_path, fer_csv, monkeypatch):
    from timm_stra.tasks.train import Trainer
    run = tmp_path / 'run'
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--output', str(run), '--keep', '3', *FAST]
    assert train_main([*args, '--epochs', '2']) == 0
    assert resolve_checkpoint(run).name == 'epoch-0002'

    def crash(self, epoch):
        raise RuntimeError('killed')
    monkeypatch.setattr(Trainer, 'train_epoch', crash)
    with pytest.raises(RuntimeError, match='killed'):  # resumed from epoch 1, then killed in epoch 2
        train_main([*args, '--epochs', '2', '--resume', str(run / 'checkpoints' / 'epoch-0001')])
    assert resolve_checkpoint(run).name == 'epoch-0001'  # a later --resume RUN continues from there
    assert [r['epoch'] for r in _jsonl(run)] == [1]


def test_a_new_run_into_an_earlier_runs_folder_is_refused(tmp_path, fer_csv, capsys):
    """It would append to the earlier log, and the earlier run's higher-numbered checkpoints would outlast its own."""
    run = tmp_path / 'run'
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--output', str(run), *FAST]
    assert train_main([*args, '--epochs', '2']) == 0
    capsys.readouterr()
    assert train_main([*args, '--epochs', '1', '--lr', '0.05']) == 1
    assert f'{run} already holds a run (metrics.jsonl and checkpoints): pass --resume' in capsys.readouterr().err
    assert [r['epoch'] for r in _jsonl(run)] == [1, 2] and resolve_checkpoint(run).name == 'epoch-0002'


def test_an_evaluation_that_fails_keeps_the_epochs_checkpoint(tmp_path, fer_csv, monkeypatch):
    from timm_stra.tasks import train as train_mod

    def fail(*args, **kwargs):
        raise RuntimeError('evaluation failed')
    monkeypatch.setattr(train_mod, 'evaluate', fail)
    run = tmp_path / 'run'
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--output', str(run), '--epochs', '2', *FAST]
    with pytest.raises(RuntimeError, match='evaluation failed'):
        train_main([*args, '--eval-interval', '1'])
    assert resolve_checkpoint(run).name == 'epoch-0001'  # --resume continues after the trained epoch
    logged = _jsonl(run)  # and its line is logged, saying what became of the evaluation
    assert [r['epoch'] for r in logged] == [1] and 'loss' in logged[0]
    assert logged[0]['evaluation_failed'] == 'RuntimeError: evaluation failed'
    monkeypatch.undo()
    assert train_main([*args, '--resume', str(run)]) == 0
    assert [r['epoch'] for r in _jsonl(run)] == [1, 2] and 'public_test_top1' in _jsonl(run)[1]



def test_resume_refuses_a_changed_setting_before_reading_the_data(tmp_path, fer_csv, capsys):
    """--resume continued with whatever options were given (another seed, batch size, recipe), without a word."""
    common = ['fer', '--data', str(fer_csv), '--eval-interval', '0', '--workers', '0', '--no-progress',
              '--batch-size', '8', '--output', str(tmp_path / 'run')]
    run = tmp_path / 'run'
    assert train_main([*common, '--input-size', '24', '24', '--model-kwargs', 'layers=[1,1,1,1]', 'drop_rate=0.0',
                       '--epochs', '1']) == 0
    capsys.readouterr()
    changed = ['--seed', '7', '--lr', '0.5', '--re-prob', '0.3', '--amp', '--model-kwargs', 'drop_rate=0.1',
               'layers=[1,1,1,1]']  # and no --input-size
    assert train_main([*common, '--epochs', '2', '--resume', str(run), *changed,
                       '--data', str(tmp_path / 'gone.csv')]) == 1  # (refused before the data is looked for)
    err = capsys.readouterr().err
    ckpt = run / 'checkpoints' / 'epoch-0001'
    assert err.strip() == (
        f'timm-stra train fer: --resume {ckpt}: --amp on (the run: off); --input-size (not given) (the run: 24 24); '
        '--lr 0.5 (the run: 0.01); --model-kwargs drop_rate=0.1 layers=[1, 1, 1, 1] (the run: drop_rate=0.0 '
        'layers=[1, 1, 1, 1]); --re-prob 0.3 (the run: 0.0); --seed 7 (the run: 42). A resumed run continues with '
        'the settings it was started with (its args.json): give them again, or start a new run with another '
        '--output.'), err
    assert [r['epoch'] for r in _jsonl(run)] == [1]
    # the same model arguments in another order are the same settings
    same = [*common, '--input-size', '24', '24', '--model-kwargs', 'drop_rate=0.0', 'layers=[1,1,1,1]']
    assert train_main([*same, '--epochs', '2', '--resume', str(run)]) == 0
    assert [r['epoch'] for r in _jsonl(run)] == [1, 2]
    # a checkpoint written before settings were kept is checked for its seed
    ckpt = run / 'checkpoints' / 'epoch-0002'
    state = load_training_state(ckpt)
    del state['settings']
    state['seed'] = 42
    torch.save(state, ckpt / 'state.pt')
    assert train_main([*same, '--epochs', '3', '--resume', str(run), '--seed', '7']) == 1
    assert '--seed 7 (the run: 42)' in capsys.readouterr().err


def test_damaged_or_finished_runs_and_models_of_another_task_are_refused_in_one_line(tmp_path, fer_csv, capsys):
    """Each was a traceback from json, timm, safetensors, torch or torchvision, or (a finished run resumed) an exit
    0 that trained nothing."""
    run = tmp_path / 'run'
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--eval-interval', '0', '--output', str(run),
            *FAST]
    assert train_main([*args, '--epochs', '1']) == 0
    ckpt = run / 'checkpoints' / 'epoch-0001'

    _refused(capsys, train_main, [*args, '--epochs', '1', '--resume', str(run)],
             f'--resume {run}: the run has trained 1 epochs of --epochs 1: nothing to continue; give --epochs above 1')
    # a fer model for ReID data (refused before the data is read), a ReID model for fer
    _refused(capsys, eval_main, ['reid', '--data', str(tmp_path / 'no-data'), '--model', str(run), '--workers', '0'],
             'the model takes 1-channel input (input_size (1, 24, 24)); reid images are colour (3 channels): give a '
             'model built for them (in_chans=3')
    _refused(capsys, train_main, ['fer', '--data', str(fer_csv), '--output', str(tmp_path / 'other'), '--model',
                                  'resnet50_reid', *FAST], 'fer images are grey (1 channel)')
    # the channels the model was built with, not its variant's (timm keeps the variant's pretrained_cfg)
    _refused(capsys, train_main, ['fer', '--data', str(fer_csv), '--output', str(tmp_path / 'colour'), *FAST,
                                  '--model-kwargs', 'in_chans=3', 'layers=[1,1,1,1]'],
             'the model takes 3-channel input')
    for name, text, message in (('bad-json', '{not json', 'config.json is not JSON'),
                                ('no-arch', '{}', 'config.json names no architecture'),
                                ('other-plugin', '{"architecture": "resnet50_plugin_not_imported"}',
                                 "names 'resnet50_plugin_not_imported', a model timm does not know: import the "
                                 'package that registers it first')):
        copy = tmp_path / name
        shutil.copytree(ckpt, copy)
        (copy / 'config.json').write_text(text)
        _refused(capsys, eval_main, ['fer', '--data', str(fer_csv), '--model', str(copy), '--workers', '0'], message)
    for damaged, message in (('state.pt', 'state.pt cannot be read'),
                             ('model.safetensors', 'model.safetensors cannot be read')):
        copy = tmp_path / f'cut-{damaged}'
        shutil.copytree(run, copy)
        path = copy / 'checkpoints' / 'epoch-0001' / damaged
        path.write_bytes(path.read_bytes()[:1000])  # a copy cut short
        _refused(capsys, train_main, [*args, '--output', str(copy), '--epochs', '2', '--resume', str(copy)], message)
    copy = tmp_path / 'runs-code'  # a state.pt that would run code: refused as such, not as damaged
    shutil.copytree(run, copy)
    state = load_training_state(copy / 'checkpoints' / 'epoch-0001')
    marker = tmp_path / 'executed'
    torch.save({**state, 'extra': RunsCode(marker)}, copy / 'checkpoints' / 'epoch-0001' / 'state.pt')
    err = _refused(capsys, train_main, [*args, '--output', str(copy), '--epochs', '2', '--resume', str(copy)],
                   'state.pt: refused. Its pickle would import or call posix.system while loading')
    assert 'weights_only' not in err  # (torch's advice would run it)
    assert not marker.exists()
    (copy / 'checkpoints' / 'epoch-0001' / 'state.pt').write_bytes(b'\x80\x02\x95garbage')  # a garbled pickle
    _refused(capsys, train_main, [*args, '--output', str(copy), '--epochs', '2', '--resume', str(copy)],
             'state.pt cannot be read (UnpicklingError: Unsupported operand 149): the checkpoint is damaged')
    copy = tmp_path / 'no-preprocessing'  # (a resumed run goes on with the preprocessing it kept there)
    shutil.copytree(run, copy)
    config = copy / 'checkpoints' / 'epoch-0001' / 'config.json'
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != 'pretrained_cfg'}))
    _refused(capsys, train_main, [*args, '--output', str(copy), '--epochs', '2', '--resume', str(copy)],
             f'{config} gives no preprocessing (pretrained_cfg with input_size, interpolation, mean, std): the folder '
             'is damaged')


def test_a_weights_file_of_the_same_classes_starts_the_run_with_its_classifier(tmp_path, fer_csv):
    """--backbone-init with a finished run's weights (as a checkpoint without state.pt advises): the classifier is
    loaded too when its classes are the data's (here checked after an epoch at learning rate 0)."""
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--eval-interval', '0', '--epochs', '1', *FAST]
    assert train_main([*args, '--output', str(tmp_path / 'first')]) == 0
    first = _weights(tmp_path / 'first', 1)
    weights = tmp_path / 'first' / 'checkpoints' / 'epoch-0001' / 'model.safetensors'
    assert train_main([*args, '--output', str(tmp_path / 'second'), '--backbone-init', str(weights), '--lr', '0']) == 0
    second = _weights(tmp_path / 'second', 1)
    for key in ('fc.weight', 'fc.bias', 'layer4.0.conv2.local.value.weight'):
        assert torch.equal(first[key], second[key]), key


def test_a_latest_pointer_to_a_missing_checkpoint_is_named(tmp_path, fer_csv, capsys):
    run = tmp_path / 'run'
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--eval-interval', '0', '--output', str(run),
            *FAST]
    assert train_main([*args, '--epochs', '1']) == 0
    (run / 'checkpoints' / 'latest').write_text('epoch-0005\n')
    capsys.readouterr()
    assert train_main([*args, '--epochs', '2', '--resume', str(run)]) == 1
    assert (f"{run / 'checkpoints' / 'latest'} names epoch-0005, which is missing: give one of the checkpoint "
            'folders that are there (epoch-0001).') in capsys.readouterr().err
    (run / 'checkpoints' / 'latest').write_text('\n')  # it named the checkpoints folder itself, "a model"
    assert train_main([*args, '--epochs', '2', '--resume', str(run)]) == 1
    assert (f"{run / 'checkpoints' / 'latest'} is empty: give one of the checkpoint folders that are there "
            '(epoch-0001).') in capsys.readouterr().err
    assert train_main([*args, '--epochs', '2', '--resume', str(tmp_path / 'nothing')]) == 1
    assert f"{tmp_path / 'nothing'} does not exist: expected a training output folder" in capsys.readouterr().err


def test_reid_resume_across_the_warm_up_is_exact(tmp_path):
    # random crop (torch RNG) and random erasing (Python's random) on; the warm-up ends at the resume point
    data = make_market1501(tmp_path / 'market')
    args = ['reid', '--data', str(data), '--input-size', '64', '32', '--backbone-init', '', '--freeze-epochs', '1',
            '--eval-interval', '0', *FAST]
    full, part = tmp_path / 'full', tmp_path / 'part'
    assert train_main([*args, '--output', str(full), '--epochs', '2']) == 0
    assert train_main([*args, '--output', str(part), '--epochs', '1']) == 0
    assert train_main([*args, '--output', str(part), '--epochs', '2', '--resume', str(part / 'checkpoints')]) == 0
    a, b = _weights(full, 2), _weights(part, 2)
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    assert _jsonl(full)[1]['loss'] == _jsonl(part)[1]['loss']


def test_fer_amp_and_gradient_clipping(tmp_path, fer_csv):
    """--amp (bfloat16 autocast on the CPU) and --clip-grad each change what a seeded run learns (a run is
    deterministic here: without them the weights would come out the same), and a run with both stays finite."""
    args = ['fer', '--data', str(fer_csv), '--epochs', '1', '--input-size', '24', '24', '--opt', 'adamw',
            '--lr', '1e-3', '--sched', 'cosine', *FAST]
    runs = {}
    for name, extra in (('plain', []), ('plain again', []), ('amp', ['--amp']), ('clip', ['--clip-grad', '1e-4']),
                        ('both', ['--amp', '--clip-grad', '0.5'])):
        runs[name] = tmp_path / name.replace(' ', '-')
        assert train_main([*args, '--output', str(runs[name]), *extra]) == 0
    weights = {name: _weights(run, 1) for name, run in runs.items()}

    def same(a, b):
        return all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a])

    assert same('plain', 'plain again') and not same('plain', 'amp') and not same('plain', 'clip')
    record = _jsonl(runs['both'])[0]
    assert torch.isfinite(torch.tensor(record['loss'])) and 'private_test_top1' in record


def test_reid_warm_up_trains_only_the_last_stage_and_head(tmp_path, capsys):
    data = make_market1501(tmp_path / 'market')
    # ImageNet initialisation from a local timm ResNet-50 state dict of the model's depth (the recipe's
    # default, tv_in1k, downloads timm's resnet50.tv_in1k)
    source = imagenet_resnet50(seed=3, layers=(1, 1, 1, 1))
    save_file(source, str(tmp_path / 'resnet50.safetensors'))
    run = tmp_path / 'run'
    assert train_main(['reid', '--data', str(data), '--output', str(run), '--epochs', '2', '--freeze-epochs', '1',
                       '--input-size', '64', '32', '--backbone-init', str(tmp_path / 'resnet50.safetensors'),
                       '--eval-interval', '1', '--keep', '3', *FAST]) == 0
    err = capsys.readouterr().err
    assert 'stra_resnet50_reid: loaded 84 ImageNet ResNet-50 tensors' in err  # the strict filter's count line
    assert f'from {tmp_path / "resnet50.safetensors"}' in err
    seed_all(42)  # the run's initial weights of the layers ResNet-50 does not have
    init = timm.create_model('stra_resnet50_reid', num_classes=4, layers=[1, 1, 1, 1]).state_dict()
    e1, e2 = _weights(run, 1), _weights(run, 2)
    for key in ('conv1.weight', 'layer1.0.conv1.weight', 'layer3.0.bn1.running_mean'):
        assert not torch.equal(init[key], source[key]), key
        assert torch.equal(e1[key], source[key]), key  # initialised, then frozen: weights and BN statistics
        assert not torch.equal(e2[key], e1[key]), key  # open from epoch 2 on
    for key in ('layer4.0.conv2.local.value.weight', 'layer4.0.conv2.mode.mask.conv1.weight', 'neck.fc.weight',
                'fc.weight'):
        assert not torch.equal(e1[key], init[key]), key

    log = _jsonl(run)
    assert 0 <= log[-1]['mAP'] <= 100 and 0 <= log[-1]['rank1'] <= 100
    capsys.readouterr()
    out_json = tmp_path / 'eval.json'
    assert eval_main(['reid', '--data', str(data), '--model', str(run), '--workers', '0', '--no-progress',
                      '--output', str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert '| mAP |' in printed and '| rank1 |' in printed
    metrics = json.loads(out_json.read_text())['metrics']
    assert metrics['mAP'] == pytest.approx(log[-1]['mAP']) and metrics['rank1'] == pytest.approx(log[-1]['rank1'])


@pytest.mark.parametrize('early', [['neck', 'fc'], ['layer3', 'neck', 'fc']])
def test_warm_up_with_the_stra_stage_frozen_keeps_its_diversity_term(tmp_path, early):
    data = make_market1501(tmp_path / 'market')
    run = tmp_path / 'run'
    assert train_main(['reid', '--data', str(data), '--output', str(run), '--epochs', '1', '--freeze-epochs', '1',
                       '--trainable-early', *early, '--input-size', '64', '32', '--backbone-init', '',
                       '--eval-interval', '0', *FAST]) == 0
    assert _jsonl(run)[0]['div'] > 0  # computed in the frozen stage, and (with layer3 open) trained through


def test_a_frozen_stra_stage_trains_what_is_open_before_it():
    from timm_stra import diversity_loss
    from timm_stra.tasks.freeze import set_trainable
    model = timm.create_model('stra_resnet50_reid', num_classes=3, layers=[1, 1, 1, 1]).train()
    set_trainable(model, ['layer3', 'fc'])
    assert not model.layer4.training and not model.layer4[0].conv2.mode.training
    model(torch.randn(2, 3, 64, 32))
    diversity_loss(model).backward()
    # the term reaches the open stage before (through its shortcut: timm zero-initialises each block's last norm)
    assert model.layer3[0].downsample[0].weight.grad.abs().sum() > 0
    assert model.layer4[0].conv2.mode.mask.conv1.weight.grad is None  # the frozen stage itself stays as it is


def test_backbone_init_of_another_architecture_stops_before_the_data_is_read(tmp_path, capsys):
    """(It stopped after every image had been decoded: minutes, on a real data set.)"""
    data = tmp_path / 'no-such-data'
    weights = tmp_path / 'resnet50.safetensors'
    save_file(imagenet_resnet50(seed=3), str(weights))  # full depth, for a model of one block per stage
    run = tmp_path / 'run'
    assert train_main(['reid', '--data', str(data), '--output', str(run), '--input-size', '64', '32',
                       '--backbone-init', str(weights), *FAST]) == 1
    err = capsys.readouterr().err
    for text in (f"--backbone-init '{weights}'", f'Cannot initialise stra_resnet50_reid from {weights}',
                 'keys the model does not have: layer1.1.', "or '' to start from random weights"):
        assert text in err, (text, err)
    assert 'no-such-data' not in err and not run.exists()



def test_a_tags_preprocessing_is_the_runs_and_a_resumed_runs(tmp_path, monkeypatch):
    """A plain timm ResNet-50 initialised from ``tv_in1k`` (bilinear; the untagged model's ``a1_in1k`` is bicubic)
    trains, saves and resumes with the tag's interpolation, the resumed run without its --backbone-init."""
    cache = tmp_path / 'hf' / 'hub'
    add_repo(cache, 'timm/resnet50.tv_in1k', {'model.safetensors': safetensors_bytes(
        imagenet_resnet50(seed=3, layers=(1, 1, 1, 1)), tmp_path / 'tv.safetensors')})
    use_offline_cache(monkeypatch, cache)
    assert timm.create_model('resnet50').pretrained_cfg['interpolation'] == 'bicubic'
    data, run = make_market1501(tmp_path / 'market'), tmp_path / 'run'
    args = ['reid', '--data', str(data), '--output', str(run), '--model', 'resnet50', '--input-size', '64', '32',
            '--freeze-epochs', '0', '--eval-interval', '0', *FAST]
    assert train_main([*args, '--epochs', '1', '--backbone-init', 'tv_in1k']) == 0
    assert train_main([*args, '--epochs', '2', '--resume', str(run)]) == 0
    for epoch in (1, 2):
        config = json.loads((run / 'checkpoints' / f'epoch-{epoch:04d}' / 'config.json').read_text())
        assert config['pretrained_cfg']['interpolation'] == 'bilinear', epoch
        assert config['pretrained_cfg']['input_size'] == [3, 64, 32], epoch


def _disk_full(path, text):
    raise OSError(errno.ENOSPC, 'No space left on device')


def test_face_trains_and_verifies_on_a_bin(tmp_path, capsys, monkeypatch):
    data = make_face_folders(tmp_path / 'faces', ids=4, per_id=6)
    (data / 'lfw.bin').write_bytes(face_bin_bytes(pairs=10))
    run = tmp_path / 'run'
    assert train_main(['face', '--data', str(data), '--output', str(run), '--epochs', '2', '--lr', '0.01',
                       '--input-size', '32', '32', *FAST]) == 0
    log = _jsonl(run)
    assert log[-1]['ce'] < log[0]['ce']
    assert 0 <= log[-1]['lfw_accuracy'] <= 100 and 0 <= log[-1]['lfw_threshold'] < 4
    # the checkpoint folder is a timm local-dir model; `eval` scores it the same way
    ckpt = resolve_checkpoint(run)
    model = timm.create_model(f'local-dir:{ckpt}', pretrained=True)
    assert model.pretrained_cfg['input_size'] == (3, 32, 32) and model.num_classes == 4
    out_json = tmp_path / 'eval.json'
    assert eval_main(['face', '--data', str(data / 'lfw.bin'), '--model', f'local-dir:{ckpt}', '--workers', '0',
                      '--no-progress', '--output', str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())['metrics']
    assert metrics['lfw_accuracy'] == pytest.approx(log[-1]['lfw_accuracy'])
    # an --output that cannot be written is refused before the evaluation (it was found after it)
    capsys.readouterr()
    for target, why in ((out_json / 'under_a_file.json', f'{out_json} is a file, not a folder'),
                        (tmp_path, f'{tmp_path} is a folder: give the path of a file to write')):
        with pytest.raises(SystemExit):
            eval_main(['face', '--data', str(data / 'lfw.bin'), '--model', f'local-dir:{ckpt}',
                       '--output', str(target)])
        out, err = capsys.readouterr()
        assert why in err.strip().splitlines()[-1] and 'lfw_accuracy' not in out
    # one that cannot be written after it (the disk filled up) fails in one line, after the table (was a traceback)
    monkeypatch.setattr(timm_stra.atomic, 'atomic_write_text', _disk_full)
    assert eval_main(['face', '--data', str(data / 'lfw.bin'), '--model', f'local-dir:{ckpt}', '--workers', '0',
                      '--no-progress', '--output', str(tmp_path / 'new' / 'eval.json')]) == 1
    out, err = capsys.readouterr()
    assert 'lfw_accuracy' in out
    assert err.strip().splitlines() == [f'timm-stra eval face: could not write {tmp_path / "new" / "eval.json"}: '
                                        'No space left on device (the results are printed above)']
    monkeypatch.undo()
    # nothing to verify on is an error, not an empty table
    capsys.readouterr()
    (tmp_path / 'empty').mkdir()
    for where, why in ((tmp_path / 'empty', f'found none in {tmp_path / "empty"}'),
                       (tmp_path / 'nowhere', f'{tmp_path / "nowhere"} does not exist')):
        assert eval_main(['face', '--data', str(where), '--model', f'local-dir:{ckpt}', '--workers', '0',
                          '--no-progress']) == 1
        err = capsys.readouterr().err
        assert f'no verification files to evaluate on: {why}' in err and '--bins' in err


def test_face_training_refuses_a_reid_set_and_a_single_identity(tmp_path, capsys):
    """Both trained without a word: a Market-1501 folder as three 'identities' (its splits), one identity as a
    classifier of one class."""
    market = make_market1501(tmp_path / 'market')
    alone = make_face_folders(tmp_path / 'alone', ids=1, per_id=4)
    for data, message in ((market, f'{market} is a person ReID set (Market-1501 layout'),
                          (alone, f'{alone}: 1 identity folder with images (id_000); training a classifier of')):
        assert train_main(['face', '--data', str(data), '--output', str(tmp_path / data.name), *FAST]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / data.name / 'checkpoints').exists()


def test_bad_image_stops_before_training_or_is_skipped(tmp_path, capsys):
    data = make_face_folders(tmp_path / 'faces', ids=4, per_id=3)
    bad = data / 'id_002' / '1.jpg'
    bad.write_bytes(b'\xff\xd8 truncated')
    run = tmp_path / 'run'
    args = ['face', '--data', str(data), '--output', str(run), '--epochs', '1', '--input-size', '32', '32', *FAST]
    assert train_main(args) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and '--skip-bad' in err
    assert not run.exists()  # nothing trained, nothing written
    assert train_main([*args, '--skip-bad']) == 0
    assert '1 bad entries skipped' in capsys.readouterr().err
    assert (run / 'checkpoints' / 'latest').is_file()


def test_malformed_csv_row_stops_with_its_line(tmp_path, fer_csv, capsys):
    lines = fer_csv.read_text().splitlines()
    lines[4] = '2,1 2 3,Training'
    path = tmp_path / 'fer2013.csv'
    path.write_text('\n'.join(lines) + '\n')
    assert train_main(['fer', '--data', str(path), '--output', str(tmp_path / 'run'), *FAST]) == 1
    assert f'{path}:5' in capsys.readouterr().err


def test_skipped_csv_row_is_counted_once(tmp_path, fer_csv, capsys):
    lines = fer_csv.read_text().splitlines()
    lines[4] = '2,1 2 3,Training'
    path = tmp_path / 'fer2013.csv'
    path.write_text('\n'.join(lines) + '\n')
    run = tmp_path / 'run'
    assert train_main(['fer', '--data', str(path), '--output', str(run), '--epochs', '1', '--skip-bad', *FAST]) == 0
    assert '1 bad entries skipped' in capsys.readouterr().err  # one file for training and evaluation: one count
    assert _jsonl(run)[-1]['skipped_bad'] == 1


def test_unexpected_bin_is_refused(tmp_path, capsys):
    data = make_face_folders(tmp_path / 'faces', ids=2, per_id=4)
    (data / 'cfp_fp.bin').write_bytes(pickle.dumps({'images': [b'x'], 'labels': [1]}))
    assert train_main(['face', '--data', str(data), '--output', str(tmp_path / 'run'), *FAST]) == 1
    err = capsys.readouterr().err
    assert 'cfp_fp.bin' in err and 'insightface' in err


def test_bin_with_a_broken_image_stops_before_training(tmp_path, capsys):
    data = make_face_folders(tmp_path / 'faces', ids=2, per_id=4)
    images, issame = pickle.loads(face_bin_bytes(pairs=10))
    images[5] = b'\xff\xd8 truncated'
    (data / 'agedb_30.bin').write_bytes(pickle.dumps((images, issame)))
    run = tmp_path / 'run'
    assert train_main(['face', '--data', str(data), '--output', str(run), '--input-size', '32', '32', *FAST]) == 1
    err = capsys.readouterr().err
    assert 'agedb_30.bin: image 5 does not decode' in err
    assert not run.exists()  # stopped before the first epoch, not at its evaluation


def test_bin_with_too_few_pairs_stops_before_training(tmp_path, capsys):
    data = make_face_folders(tmp_path / 'faces', ids=2, per_id=4)
    (data / 'lfw.bin').write_bytes(face_bin_bytes(pairs=3))
    run = tmp_path / 'run'
    assert train_main(['face', '--data', str(data), '--output', str(run), '--input-size', '32', '32', *FAST]) == 1
    assert 'lfw.bin: 3 pairs; the 10-fold verification protocol needs at least 10' in capsys.readouterr().err
    assert not run.exists()



def test_every_bad_face_entry_is_named_in_one_message(tmp_path, capsys):
    """A bad identity-folder image and two bad .bin files are named together (they took three runs to find)."""
    data = make_face_folders(tmp_path / 'faces', ids=2, per_id=4)
    bad = data / 'id_001' / '2.jpg'
    bad.write_bytes(b'\xff\xd8 truncated')
    images, issame = pickle.loads(face_bin_bytes(pairs=10))
    images[5] = b'\xff\xd8 truncated'
    (data / 'agedb_30.bin').write_bytes(pickle.dumps((images, issame)))
    (data / 'lfw.bin').write_bytes(face_bin_bytes(pairs=3))
    (data / 'cfp_fp.bin').write_bytes(face_bin_bytes(pairs=10))  # a good one among them
    run = tmp_path / 'run'
    args = ['face', '--data', str(data), '--output', str(run), '--input-size', '32', '32', *FAST]
    assert train_main(args) == 1
    err = capsys.readouterr().err
    for text in (str(bad), '--skip-bad', '2 verification files refused', 'agedb_30.bin: image 5 does not decode',
                 'lfw.bin: 3 pairs; the 10-fold verification protocol needs at least 10'):
        assert text in err, (text, err)
    assert 'cfp_fp' not in err and not run.exists()
    # --skip-bad skips the folder's image; the .bin files are still refused, both of them
    assert train_main([*args, '--skip-bad']) == 1
    err = capsys.readouterr().err
    assert str(bad) not in err and '2 verification files refused' in err and not run.exists()

def _state(epoch, **extra):
    """A training state with every part a resumed run reads (``checkpoint.STATE_KEYS``), empty."""
    return {'epoch': epoch, 'optimizer': {}, 'scheduler': {}, 'scaler': {}, 'rng': [], **extra}


def test_checkpoint_write_is_atomic(tmp_path):
    model = timm.create_model('resnet50_fer', layers=[1, 1, 1, 1])
    data_config = ckpt_mod.data_config_for(model)
    save_checkpoint(tmp_path, 1, model, {}, data_config, _state(1))
    with torch.no_grad():
        model.fc.weight.add_(1)
    # the weights are written, then the training state fails to (a lambda cannot be pickled): a real failure
    # between the checkpoint's files
    with pytest.raises(Exception, match="Can't (pickle|get local object)"):
        save_checkpoint(tmp_path, 2, model, {}, data_config, _state(2, unpicklable=lambda: None))
    latest = resolve_checkpoint(tmp_path)
    assert latest.name == 'epoch-0001'
    assert sorted(p.name for p in latest.parent.iterdir()) == ['epoch-0001', 'latest']  # no partial folder
    assert load_training_state(latest) == _state(1)
    assert not torch.equal(load_file(str(latest / 'model.safetensors'))['fc.weight'], model.fc.weight)
    # the same epoch written again (a run resumed from an older checkpoint) replaces the folder
    save_checkpoint(tmp_path, 1, model, {}, data_config, _state(1, again=True))
    assert load_training_state(latest) == _state(1, again=True)
    assert torch.equal(load_file(str(latest / 'model.safetensors'))['fc.weight'], model.fc.weight)
    assert sorted(p.name for p in latest.parent.iterdir()) == ['epoch-0001', 'latest']


@pytest.mark.parametrize('option, value, message', [
    ('--epochs', '0', 'expected 1 or more, got 0'),  # ran nothing and said nothing
    ('--batch-size', '1', 'expected 2 or more, got 1'),  # BatchNorm's error from inside the first step
    ('--eval-batch-size', '0', 'expected 1 or more, got 0'),
    ('--workers', '-2', 'expected 0 or more, got -2'),  # the DataLoader's traceback
    ('--keep', '-1', 'expected 0 or more, got -1'),  # (0 keeps them all)
    ('--freeze-epochs', '-1', 'expected 0 or more, got -1'),
    ('--warmup-epochs', '-2', 'expected 0 or more, got -2'),
    ('--crop-padding', '-3', 'expected 0 or more, got -3'),
    ('--eval-interval', '-1', 'expected 0 or more, got -1'),
    ('--lr', '-0.1', "expected 0 or more, got '-0.1'"),  # the optimizer's traceback
    ('--div-weight', 'nan', "expected a finite number, got 'nan'"),
    ('--decay-rate', '0', "expected a number above 0, got '0'"),  # silently stopped learning at the first decay
    ('--smoothing', '1.5', "expected a number from 0 to 1, below 1, got '1.5'"),  # a bare AssertionError
    ('--re-prob', '2', "expected a number from 0 to 1, got '2'"),  # trained with every image erased
    ('--hflip', '1.5', "expected a number from 0 to 1, got '1.5'"),
    ('--input-size', '0', 'expected 1 or more, got 0'),
    ('--device', 'tpu', "'tpu': choose cpu, cuda or cuda:N"),  # torch's list of every device type
    ('--device', 'cpu:1', "'cpu:1': choose cpu, cuda or cuda:N"),
    ('--seed', str(2 ** 32), f'expected an integer from 0 to {2 ** 32 - 1}, got {2 ** 32}'),  # (overflowed later)
])
def test_option_values_out_of_range_are_refused_by_the_parser(tmp_path, capsys, option, value, message):
    """Each of these ran (or crashed deep in torch or timm) before the options were range-checked."""
    argv = ['reid', '--data', str(tmp_path / 'no-such-data'), '--output', str(tmp_path / 'run'), *FAST,
            option, value, *(['8'] if option == '--input-size' else [])]
    with pytest.raises(SystemExit) as exit_:
        train_main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f'argument {option}' in err and message in err, err
    assert not (tmp_path / 'run').exists()


def test_an_output_that_cannot_be_a_folder_and_an_unknown_task_are_refused(tmp_path, capsys):
    a_file = tmp_path / 'a-file'
    a_file.write_text('')
    for output, message in ((a_file, f'--output {a_file} is a file, not a folder'),
                            (a_file / 'run', f'--output {a_file / "run"}: {a_file} is a file, not a folder')):
        argv = ['reid', '--data', str(tmp_path / 'no-such-data'), '--output', str(output), *FAST]
        assert train_main(argv) == 1  # (a FileExistsError or NotADirectoryError traceback)
        err = capsys.readouterr().err
        assert message in err and 'no-such-data' not in err, err
    assert train_main(['reied', '--data', str(tmp_path)]) == 2
    assert "timm-stra train: no task 'reied': choose reid, face, fer" in capsys.readouterr().err


@pytest.mark.parametrize('option, value', [('--batch-size', '0'), ('--workers', '-1')])
def test_eval_option_values_out_of_range_are_refused_by_the_parser(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        eval_main(['fer', '--data', str(tmp_path), '--model', str(tmp_path), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f'argument {option}: expected' in err and f'got {value}' in err, err


@pytest.mark.parametrize('argv, message', [
    (['--freeze-epochs', '1', '--trainable-early'], "no modules: nothing to train during the frozen epochs"),
    (['--freeze-epochs', '1', '--trainable-early', 'global_pool', 'act1'], "nothing to train during the frozen"),
    (['--freeze-epochs', '1', '--trainable-early', 'layer5'], "['layer5'] are not modules of StRAResNet"),
    (['--opt', 'sgdd'], '--opt sgdd: Optimizer sgdd not found in registry'),
    (['--sched', 'stepp'], "--sched stepp: Unknown scheduler 'stepp'"),
    (['--model', 'nosuch'], '--model nosuch: timm has no such model; timm-stra models lists ours'),
    (['--model-kwargs', 'bogus=1'], "--model stra_resnet50_reid --model-kwargs bogus=1: StRAResNet.__init__() got an "
                                    "unexpected keyword argument 'bogus'"),
    (['--decay-epochs', '0'], '--sched step with --decay-epochs 0: give the epochs between'),
    # what the run sets itself, or a model it cannot train (tracebacks at the first step, or silently replaced)
    (['--model-kwargs', 'num_classes=3', 'features_only=true'], '--model-kwargs features_only num_classes: arguments '
     'timm-stra train does not take (features_only: training needs the classifier; num_classes: the training set '
     'gives the classes)'),
    (['--model-kwargs', 'pretrained=true'], 'pretrained: the initial weights are --backbone-init'),
    (['--model-kwargs', 'global_pool=""'], "global_pool='': the classifier needs pooled features"),
    (['--model-kwargs', 'drop_rate=1.5'], 'drop_rate is a probability below 1, got 1.5'),
])
def test_bad_freeze_and_optimization_options_are_refused_before_the_data_is_read(tmp_path, capsys, argv, message):
    """An empty or parameter-free --trainable-early froze everything (a traceback from backward); a typo was found
    only once the whole data set had been decoded."""
    missing = tmp_path / 'no-such-data'  # refused before it is read: its absence is not what is reported
    assert train_main(['reid', '--data', str(missing), '--output', str(tmp_path / 'run'), *FAST, *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and 'no-such-data' not in err, err


@pytest.mark.parametrize('task, name, kwargs, message', [
    ('fer', 'stra_resnet50_fer', {'num_classes': 0}, "outputs of shape (512,) per image; fer scores the logits of "
     "FER2013's 7 classes: give a model with num_classes=7"),
    ('fer', 'stra_resnet50_fer', {'num_classes': 3}, 'outputs of shape (3,) per image'),
    ('reid', 'stra_resnet50_reid', {'num_classes': 0, 'global_pool': ''}, "embedding is of shape (2048, 16, 8) per "
     "image, not a vector (a model built with global_pool=''?)"),
])
def test_eval_refuses_a_model_whose_outputs_the_task_cannot_score_before_reading_data(
        tmp_path, capsys, task, name, kwargs, message):
    """A fer model without the 7 classes was scored (0% for an embedding's argmax, 14% for 3 classes); a feature-map
    model failed in the metric after every image had been extracted. The data is not even looked at."""
    folder = tmp_path / 'model'
    save_for_hf(timm.create_model(name, layers=[1, 1, 1, 1], **kwargs), folder)
    assert eval_main([task, '--data', str(tmp_path / 'no-data'), '--model', f'local-dir:{folder}', '--workers', '0',
                      '--device', 'cpu']) == 1
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, err


def test_a_resumed_run_goes_on_in_its_own_folder_unless_told_otherwise(tmp_path, fer_csv, capsys, monkeypatch):
    """Without --output, --resume wrote the next epochs to output/fer: the run's history in two folders."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / 'run'
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--eval-interval', '0', *FAST]
    assert train_main([*args, '--output', str(run), '--epochs', '1']) == 0
    capsys.readouterr()
    assert train_main([*args, '--epochs', '2', '--resume', str(run / 'checkpoints' / 'epoch-0001')]) == 0
    assert f'at epoch 1, writing to {run}' in capsys.readouterr().err
    assert [r['epoch'] for r in _jsonl(run)] == [1, 2] and not (tmp_path / 'output').exists()
    outside = tmp_path / 'outside-a-run'  # a checkpoint folder of no run: the default folder
    shutil.copytree(run / 'checkpoints' / 'epoch-0002', outside)
    assert train_main([*args, '--epochs', '3', '--resume', str(outside)]) == 0
    assert [r['epoch'] for r in _jsonl(tmp_path / 'output' / 'fer')] == [3]


def test_a_resumed_run_refuses_a_training_set_of_other_classes(tmp_path, capsys):
    """Another identity count failed in load_state_dict (a traceback); other identities of the same count resumed,
    each classifier row then standing for another person."""
    args = ['reid', '--input-size', '64', '32', '--backbone-init', '', '--eval-interval', '0', *FAST]
    run = tmp_path / 'run'
    assert train_main([*args, '--data', str(make_market1501(tmp_path / 'market')), '--output', str(run),
                       '--epochs', '1']) == 0
    assert load_training_state(run / 'checkpoints' / 'epoch-0001')['classes'] == ['1', '2', '3', '4']
    for ids, message in (((1, 2, 3), '3 classes, the run was trained on 4'),
                         ((1, 2, 3, 8), "1 of its 4 classes are not the run's (first: 8)")):
        data = make_market1501(tmp_path / f'market-{len(ids)}', train_ids=ids)
        _refused(capsys, train_main, [*args, '--data', str(data), '--epochs', '2', '--resume', str(run)],
                 f'--data {data}: {message}')
    assert [r['epoch'] for r in _jsonl(run)] == [1]


def test_a_resumed_checkpoint_of_another_model_or_an_incomplete_state_is_refused_in_one_line(tmp_path, fer_csv,
                                                                                             capsys):
    """A model.safetensors of another architecture failed in load_state_dict, a state.pt without its scheduler with
    a KeyError: tracebacks."""
    args = ['fer', '--data', str(fer_csv), '--input-size', '24', '24', '--eval-interval', '0', *FAST]
    run = tmp_path / 'run'
    assert train_main([*args, '--output', str(run), '--epochs', '1']) == 0
    other = timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 1], groups=4).state_dict()
    for name, damage, message in (
            ('other-weights', lambda c: save_file(other, str(c / 'model.safetensors')),
             'model.safetensors does not fit the model these options build'),
            ('no-scheduler', lambda c: torch.save({k: v for k, v in load_training_state(c).items()
                                                    if k != 'scheduler'}, c / 'state.pt'),
             'state.pt lacks scheduler: it is not a whole training state')):
        copy = tmp_path / name
        shutil.copytree(run, copy)
        damage(copy / 'checkpoints' / 'epoch-0001')
        _refused(capsys, train_main, [*args, '--epochs', '2', '--resume', str(copy)], message)


def test_a_face_img_size_other_than_the_input_size_is_refused_before_the_data_is_read(tmp_path, capsys):
    missing = tmp_path / 'no-such-data'
    assert train_main(['face', '--data', str(missing), '--input-size', '64', '64', *FAST[:-2],
                       '--model-kwargs', 'img_size=48', 'layers=[1,1,1,1]']) == 1
    err = capsys.readouterr().err
    assert '--model-kwargs img_size=[48, 48] and --input-size 64 64: a face model takes only the size it is built ' \
           'for' in err and 'no-such-data' not in err, err


@pytest.mark.parametrize('name, kwargs, input_size, mean', [
    ('stra_resnet50_fer', {'in_chans': 3}, (3, 44, 44), (0.5, 0.5, 0.5)),  # one value repeated
    ('resnet50_reid', {'in_chans': 1}, (1, 256, 128), (0.449,)),  # ImageNet's three averaged
    ('stra_resnet50_face', {'in_chans': 1, 'img_size': (96, 80)}, (1, 96, 80), (0.5,)),
    ('stra_resnet50_reid', {}, (3, 256, 128), (0.485, 0.456, 0.406)),  # the variant's own
])
def test_the_data_config_has_the_channels_the_model_takes(name, kwargs, input_size, mean):
    """timm keeps the variant's pretrained_cfg (its weights' channels): a fer model built for colour was given grey
    images' config, which passed the channel check and failed in the first convolution."""
    model = timm.create_model(name, layers=[1, 1, 1, 1], **kwargs).eval()
    config = ckpt_mod.data_config_for(model)
    assert config['input_size'] == input_size
    torch.testing.assert_close(config['mean'], mean, atol=5e-4, rtol=0)
    assert len(config['std']) == len(mean)
    with torch.no_grad():
        model(torch.randn(1, *input_size))
