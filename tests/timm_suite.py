"""Fetch timm's own model test-suite (``tests/test_models.py`` of the timm sdist) for the installed timm.

The file is not part of the timm wheel, so it is taken from the sdist on PyPI
(``pip download --no-binary``) once and cached under ``.timm-tests/timm-<version>/``
at the repository root (or under the folder ``TIMM_STRA_TIMM_TESTS`` names: a read-only
checkout), beside a ``conftest.py`` that imports ``timm_stra`` so that timm's
parametrisation sees our models. Nothing of timm's is committed here.
"""
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

CACHE_VARIABLE = 'TIMM_STRA_TIMM_TESTS'
MEMBER = 'tests/test_models.py'


def cache_folder() -> Path:
    """Where timm's test files are kept: ``$TIMM_STRA_TIMM_TESTS``, else ``.timm-tests`` in the checkout."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path(__file__).resolve().parents[1] / '.timm-tests')


def timm_test_models_file() -> Path:
    """Path of timm's ``test_models.py`` matching the installed timm, downloading it on first use."""
    folder = cache_folder() / f'timm-{timm.__version__}'
    target = folder / 'test_models.py'
    try:
        if not target.is_file():
            _fetch(target)
        conftest = folder / 'conftest.py'
        if not conftest.is_file():
            conftest.write_text('import timm_stra  # registers the models under test\n')
    except OSError as e:
        raise RuntimeError(
            f'timm\'s model tests cannot be kept in {folder} ({e.strerror or e}): set {CACHE_VARIABLE} to a '
            f'writable folder (a read-only checkout, for one).') from e
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
