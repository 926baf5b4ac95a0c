"""Write an output folder atomically: it appears, complete, or not at all."""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Union


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_dir(target: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` when the block succeeds.

    On any error the temporary folder (and any parent folder created for it) is
    removed, so a failed write leaves nothing behind. ``target`` must not exist, or
    be an empty folder.

    Raises:
        FileExistsError: ``target`` exists and is a file or a non-empty folder.
    """
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f'{target} already exists and is not an empty folder: choose a new output folder, '
                              'or delete this one first.')
    created: List[Path] = []
    for parent in reversed(target.absolute().parents):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}.', suffix='.partial', dir=target.absolute().parent))
    try:
        yield tmp
        mask = _umask()  # mkdtemp (and some writers) make files private: give them the usual permissions
        os.chmod(tmp, 0o777 & ~mask)
        for path in tmp.rglob('*'):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        if target.is_dir():
            target.rmdir()  # empty (checked above)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
