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
    if not target.is_file():
        _fetch(target)
    conftest = folder / 'conftest.py'
    if not conftest.is_file():
        conftest.write_text('import timm_stra  # registers the models under test\n')
    return target


def _fetch(target: Path) -> None:
    """Write timm's ``test_models.py`` to ``target`` from the installed version's sdist, fetched by pip."""
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
             f'timm=={timm.__version__}', '--dest', tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sdists = sorted(Path(tmp).glob('timm-*.tar.gz'))
        if fetched.returncode or not sdists:
            last = (fetched.stderr.strip().splitlines() or ['no sdist among the files'])[-1]
            raise RuntimeError(
                f'timm {timm.__version__}\'s sdist could not be fetched from the package index ({last}): the test '
                f'needs its {MEMBER}; give pip access to PyPI, or put that file at {target}.')
        with tarfile.open(sdists[0]) as tar:
            member = tar.getmember(f'timm-{timm.__version__}/{MEMBER}')
            data = tar.extractfile(member).read()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix('.tmp')
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
