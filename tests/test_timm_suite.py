"""``timm_suite``: where timm's model tests are kept, and what a folder that cannot hold them says."""
import re

import pytest
import timm

from timm_suite import CACHE_VARIABLE, timm_test_models_file


def test_a_hand_placed_file_in_the_named_folder_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path))
    placed = tmp_path / f'timm-{timm.__version__}' / 'test_models.py'
    placed.parent.mkdir()
    placed.write_text('# timm tests, placed by hand\n')
    assert timm_test_models_file() == placed
    assert placed.read_text() == '# timm tests, placed by hand\n'  # not fetched again
    assert 'import timm_stra' in (placed.parent / 'conftest.py').read_text()


def test_a_folder_that_cannot_be_written_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path))
    folder = tmp_path / f'timm-{timm.__version__}'
    (folder / 'conftest.py').mkdir(parents=True)  # where the conftest goes, a folder: it cannot be written
    (folder / 'test_models.py').write_text('')
    with pytest.raises(RuntimeError, match=rf'{re.escape(str(folder))} .*set {CACHE_VARIABLE} to a writable folder'):
        timm_test_models_file()
