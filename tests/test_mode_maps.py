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
from timm_stra.tools.shown_image import load_image_as_shown


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
    assert 'resnet50_fer has no mode attention' in capsys.readouterr().err  # (it said StRAResNet, the class)
    Image.new('L', (48, 48), 128).save(tmp_path / 'cut.jpg')
    (tmp_path / 'cut.jpg').write_bytes((tmp_path / 'cut.jpg').read_bytes()[:300])
    assert cli_main(['modes', str(tmp_path / 'cut.jpg'), '--model', str(run), '--out', str(out)]) == 1
    assert f"{tmp_path / 'cut.jpg'}: cannot be read as an image" in capsys.readouterr().err  # (PIL's names no file)
    assert cli_main(['modes', str(tmp_path / 'nothing.png'), '--model', str(run), '--out', str(out)]) == 1


def test_every_module_keeps_its_own_mode(fer):
    fer.train()
    fer.bn1.eval()  # a frozen norm, as the ReID warm-up leaves the early stages
    spatial_masks(fer, torch.randn(1, 1, 44, 44))
    assert fer.training and not fer.bn1.training and fer.layer4.training


def test_batched_masks_are_a_clear_error():
    with pytest.raises(ValueError, match=r'\[m\[i\] for m in masks\]'):
        mask_picture(Image.new('RGB', (8, 8)), [torch.rand(1, 8, 4, 4)])


def _person(tmp_path, name='person.png', size=(128, 128)):
    path = tmp_path / name
    Image.new('RGB', size, (90, 120, 150)).save(path)
    return path


def test_picture_shows_the_crop_the_model_saw(tmp_path, capsys):
    # a square image for a 256x128 ReID model: squashed to 256x128 whole, as training and `eval` fit it (the
    # model's pretrained_cfg says crop_mode='squash'), not its middle half; the tiles have the model's 1:2 aspect
    path = tmp_path / 'person.png'
    image = Image.new('RGB', (128, 128), (40, 60, 200))
    image.paste((220, 30, 30), (0, 0, 16, 128))  # a red band along the left edge: outside a centre crop
    image.save(path)
    out = tmp_path / 'modes.png'
    assert cli_main(['modes', str(path), '--model', 'stra_resnet50_reid', '--out', str(out),
                     '--tile-height', '64']) == 0
    picture = Image.open(out).convert('RGB')
    assert picture.size == (9 * 32, 3 * 64)
    red, green, blue = picture.getpixel((1, 32))  # the first tile is the image as the model saw it
    assert red > 150 and blue < 100
    assert 'over the 256x128 (HxW) image the model saw' in capsys.readouterr().err


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / 'rotated.jpg'
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.new('RGB', (256, 128), (90, 120, 150)).save(path, exif=exif)
    assert load_image_as_shown(path).size == (128, 256)


def test_16_bit_and_transparent_images_are_shown_as_a_viewer_shows_them(tmp_path):
    deep = tmp_path / 'deep.png'
    Image.fromarray(__import__('numpy').full((4, 4), 32896, dtype='uint16')).save(deep)  # mid-grey in 16 bits
    assert Image.open(deep).mode.startswith('I')
    image = load_image_as_shown(deep)
    assert image.mode == 'L' and image.getpixel((0, 0)) == 128
    clear = tmp_path / 'clear.png'
    Image.new('RGBA', (4, 4), (0, 0, 0, 0)).save(clear)
    assert load_image_as_shown(clear).convert('RGB').getpixel((0, 0)) == (255, 255, 255)


def test_bad_output_name_or_tile_height_fail_before_any_work(tmp_path, capsys):
    person = str(_person(tmp_path))
    assert cli_main(['modes', person, '--model', 'no_such_model', '--out', str(tmp_path / 'o.xyz')]) == 1
    assert 'cannot write pictures named .xyz' in capsys.readouterr().err  # before the model name is looked up
    with pytest.raises(SystemExit):
        cli_main(['modes', person, '--model', 'stra_resnet50_reid', '--out', str(tmp_path / 'o.png'),
                  '--tile-height', '0'])
    assert 'argument --tile-height: expected an integer from 1 to 2048, got 0' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # (100000 filled 23 GB before the system killed it)
        cli_main(['modes', person, '--model', 'stra_resnet50_reid', '--out', str(tmp_path / 'o.png'),
                  '--tile-height', '100000'])
    assert 'argument --tile-height: expected an integer from 1 to 2048, got 100000' in capsys.readouterr().err
    a_file = tmp_path / 'a-file'
    a_file.write_text('')
    with pytest.raises(SystemExit):  # (a FileExistsError naming the folder; in /proc, the temporary file's name)
        cli_main(['modes', person, '--model', 'stra_resnet50_reid', '--out', str(a_file / 'o.png')])
    assert f'argument --out: {a_file / "o.png"}: {a_file} is a file, not a folder' in capsys.readouterr().err


def test_a_picture_too_large_to_draw_is_refused_before_it_is_made():
    masks = [torch.rand(64, 4, 2)] * 3  # 64 modes: 65 tiles a row
    with pytest.raises(ValueError, match=r'65 x 3 tiles of 1024x2048 pixels would make a picture of 66560x6144'):
        mask_picture(Image.new('RGB', (64, 128)), masks, tile_height=2048)


def test_a_failed_write_keeps_the_old_picture(tmp_path, capsys):
    out = tmp_path / 'keep.xbm'  # XBM holds black and white only: Pillow fails writing an RGB picture into it
    out.write_bytes(b'an older picture')
    assert cli_main(['modes', str(_person(tmp_path)), '--model', 'stra_resnet50_fer', '--out', str(out),
                     '--tile-height', '16']) == 1
    assert 'timm-stra modes: cannot write mode RGB as XBM' in capsys.readouterr().err
    assert out.read_bytes() == b'an older picture'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.xbm', 'person.png']  # no temporary file left
