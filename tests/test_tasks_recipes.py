"""The paper's recipes (SPEC 4) as the defaults of `timm-stra train`, and the image pipelines."""

import pytest
import torch
from PIL import Image

from timm_stra.tasks.train_options import build_parser, create_optimization
from timm_stra.tasks.transforms import eval_transform, train_transform


def _lrs(task):
    args = build_parser(task).parse_args(['--data', 'unused'])
    optimizer, scheduler = create_optimization(torch.nn.Linear(2, 2), args)
    lrs = []
    for epoch in range(args.epochs):
        lrs.append(optimizer.param_groups[0]['lr'])  # the rate used during 0-based `epoch`
        scheduler.step(epoch + 1)
    return args, optimizer, lrs


def test_reid_recipe():
    args, optimizer, lrs = _lrs('reid')
    assert isinstance(optimizer, torch.optim.Adam) and args.epochs == 100 and args.batch_size == 32
    assert all(g['weight_decay'] == 5e-4 for g in optimizer.param_groups)  # on every parameter
    assert (args.smoothing, args.div_weight, args.freeze_epochs, args.re_prob) == (0.1, 1.0, 8, 0.5)
    for epoch, lr in enumerate(lrs):  # x0.2 every 20 epochs
        assert lr == pytest.approx(3e-4 * 0.2 ** (epoch // 20)), epoch


def test_face_recipe():
    args, optimizer, lrs = _lrs('face')
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]['momentum'] == 0.9
    assert (args.epochs, args.batch_size, args.div_weight, args.freeze_epochs) == (20, 512, 0.1, 0)
    # x0.1 at the 8th and the 12th epoch (counted from 1)
    assert lrs[:7] == pytest.approx([0.1] * 7) and lrs[7:11] == pytest.approx([0.01] * 4)
    assert lrs[11:] == pytest.approx([0.001] * 9)


def test_fer_recipe():
    args, optimizer, lrs = _lrs('fer')
    assert isinstance(optimizer, torch.optim.SGD) and (args.epochs, args.batch_size, args.div_weight) == (190, 128, 1.)
    for epoch, lr in enumerate(lrs):  # the rule of the code the paper follows, 0-based epochs
        expected = 0.01 * 0.9 ** ((epoch - 80) // 5) if epoch > 80 else 0.01
        assert lr == pytest.approx(expected), epoch


def _img(mode, size):
    return Image.new(mode, size, 128)


def test_pipelines_give_the_model_input():
    reid = {'input_size': (3, 256, 128), 'interpolation': 'bilinear', 'mean': (0.485, 0.456, 0.406),
            'std': (0.229, 0.224, 0.225)}
    out = train_transform('reid', reid, re_prob=1.0, crop_padding=10)(_img('RGB', (64, 128)))
    assert out.shape == (3, 256, 128)
    assert (out == 0).any()  # random erasing (probability 1) wrote the mean, 0 after normalisation
    face = {'input_size': (3, 112, 112), 'interpolation': 'bilinear', 'mean': (0.5,) * 3, 'std': (128 / 255,) * 3}
    img = Image.new('RGB', (150, 120), (255, 0, 0))
    assert train_transform('face', face)(img).shape == (3, 112, 112)
    out = eval_transform('face', face)(img)
    assert out.shape == (3, 112, 112) and out[0].max().item() == pytest.approx((1 - 0.5) / (128 / 255))  # (x-127.5)/128
    fer = {'input_size': (1, 44, 44), 'interpolation': 'bilinear', 'mean': (0.5,), 'std': (0.5,)}
    assert train_transform('fer', fer)(_img('L', (48, 48))).shape == (1, 44, 44)
    patterned = Image.frombytes('L', (48, 48), bytes(range(256)) * 9)  # a flip or a crop would show
    evaluated = [eval_transform('fer', fer)(patterned) for _ in range(8)]
    assert all(torch.equal(e, evaluated[0]) for e in evaluated)  # deterministic
    torch.manual_seed(0)
    trained = [train_transform('fer', fer)(patterned) for _ in range(16)]
    assert any(not torch.equal(t, trained[0]) for t in trained)  # (the training flip: this image would show it)


@pytest.mark.parametrize('name, task, kwargs', [
    ('stra_resnet50_reid', 'reid', {}),
    ('resnet50_reid', 'reid', {}),
    ('stra_resnet50_face', 'face', {}),
    ('stra_resnet50_face', 'face', {'img_size': (224, 192)}),  # VGGFace2's shape: squashed, as the task does
    ('stra_resnet50_fer', 'fer', {}),
])
def test_timm_fits_an_image_as_the_task_does(tmp_path, name, task, kwargs):
    """timm's evaluation transform from a saved model's config.json (what `timm-stra modes` and the model card's
    snippet use) fits an image as training and `eval` do: a ReID model squashes a photo to 256x128, not a centre
    crop of it. The image is 3:1, so squash and crop differ."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm_stra.hub import save_for_hf
    from timm_stra.tasks.checkpoint import data_config_for
    save_for_hf(timm.create_model(name, **kwargs), tmp_path / 'model')
    model = timm.create_model(f'local-dir:{tmp_path / "model"}', pretrained=True)
    config = resolve_data_config(model=model)
    image = Image.new('RGB', (30, 90), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 30, 30))  # the top third blue: a centre crop would cut it
    image = image.convert('L') if config['input_size'][0] == 1 else image
    theirs, ours = create_transform(**config)(image), eval_transform(task, data_config_for(model))(image)
    assert theirs.shape == ours.shape and torch.equal(theirs, ours)
