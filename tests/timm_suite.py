"""Fetch timm's own model test-suite (``tests/test_models.py`` of the timm sdist) for the installed timm.

The file is not part of the timm wheel, so it is taken from the sdist on PyPI
(``pip download --no-binary``) once and cached under ``.timm-tests/timm-<version>/``
at the repository root, beside a ``conftest.py`` that imports ``timm_stra`` so that
timm's parametrisation sees our models. Nothing of timm's is committed here.
"""
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

CACHE = Path(__file__).resolve().parents[1] / '.timm-tests'
MEMBER = 'tests/test_models.py'


def timm_test_models_file() -> Path:
    """Path of timm's ``test_models.py`` matching the installed timm, downloading it on first use."""
    folder = CACHE / f'timm-{timm.__version__}'
    target = folder / 'test_models.py'
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
             f'timm=={timm.__version__}', '--dest', tmp],
            check=True, stdout=subprocess.DEVNULL)
        sdist = next(Path(tmp).glob('timm-*.tar.gz'))
        with tarfile.open(sdist) as tar:
            member = tar.getmember(f'timm-{timm.__version__}/{MEMBER}')
            data = tar.extractfile(member).read()
    (folder / 'conftest.py').write_text('import timm_stra  # registers the models under test\n')
    tmp_target = target.with_suffix('.tmp')
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
    return target
