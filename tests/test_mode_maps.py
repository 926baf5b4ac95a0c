"""``timm-stra modes``: every StRA operator's spatial masks, read by hooks, drawn over the image."""
import pytest
import timm
import torch
from PIL import Image

import timm_stra
from timm_stra.cli import main as cli_main
from timm_stra.layers import DiversityRecorder
from timm_stra.tasks.checkpoint import save_checkpoint
from timm_stra.tools.mode_maps import mask_picture, spatial_masks


@pytest.fixture(scope='module')
def fer():
    torch.manual_seed(0)
    return timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 2])


def test_masks_of_every_operator_in_eval_mode_and_the_model_left_as_it_was(fer):
    fer.train()
    masks = spatial_masks(fer, torch.randn(3, 1, 44, 44))
    assert [m.shape for m in masks] == [(3, 8, 6, 6)] * 2  # two StRA blocks, 8 modes on the 6x6 map
    for m in masks:
        torch.testing.assert_close(m.sum((2, 3)), torch.ones(3, 8))
    assert fer.training and all(not r._forward_hooks for r in fer.modules() if isinstance(r, DiversityRecorder))
    with pytest.raises(RuntimeError, match='No diversity term recorded'):  # the eval pass recorded nothing
        timm_stra.diversity_per_sample(fer)


def test_a_model_without_mode_attention_is_a_clear_error():
    with pytest.raises(ValueError, match='no mode attention'):
        spatial_masks(timm.create_model('resnet50_fer', layers=[1, 1, 1, 1]), torch.randn(1, 1, 44, 44))


def test_picture_lays_out_image_and_masks():
    image = Image.new('RGB', (64, 128), (200, 100, 50))
    masks = torch.zeros(2, 4, 4, 2)
    masks[0, :, 0, 0] = 1  # operator 0: every mode on the top-left position
    masks[1] = 1 / 8  # operator 1: uniform masks
    picture = mask_picture(image, list(masks), tile_height=64)
    assert picture.size == (5 * 32, 2 * 64) and picture.mode == 'RGB'
    assert picture.getpixel((5, 5)) == (200, 100, 50)  # the image itself first
    top_left, bottom_right = picture.getpixel((32 + 2, 2)), picture.getpixel((32 + 30, 62))
    assert sum(top_left) > sum(bottom_right)  # bright where the mode looks, darkened where it does not
    assert picture.getpixel((32 + 2, 64 + 2)) == picture.getpixel((32 + 30, 64 + 62))  # uniform: one shade


def test_command_draws_a_trained_checkpoint(fer, tmp_path, capsys):
    run = tmp_path / 'run'
    save_checkpoint(run, 1, fer, dict(layers=[1, 1, 1, 2]), {'input_size': (1, 44, 44), 'interpolation': 'bilinear',
                                                            'mean': (0.5,), 'std': (0.5,)}, state={'epoch': 1})
    Image.new('L', (48, 48), 128).save(tmp_path / 'face.png')
    out = tmp_path / 'pictures' / 'modes.png'
    assert cli_main(['modes', str(tmp_path / 'face.png'), '--model', str(run), '--out', str(out),
                     '--tile-height', '48']) == 0
    assert Image.open(out).size == (9 * 48, 2 * 48)
    assert '2 operators x 8 modes, masks of 6x6 positions' in capsys.readouterr().err
    assert cli_main(['modes', str(tmp_path / 'face.png'), '--model', 'resnet50_fer', '--out', str(out)]) == 1
    assert 'no mode attention' in capsys.readouterr().err
    assert cli_main(['modes', str(tmp_path / 'nothing.png'), '--model', str(run), '--out', str(out)]) == 1
