"""Atomic writes: an output folder or a file appears complete, or not at all.

The writers work beside the target under a temporary name, flush what they wrote to disk
(``fsync`` of every file and folder), then rename it into place and flush the containing
folder, so that neither a crash nor a power cut can leave a half-written target. Used for
``save_for_hf`` / ``timm-stra convert`` output folders (new folders only) and for training
checkpoints and their ``latest`` pointer (which replace older ones), benchmark records and pictures.
"""
import argparse
import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

PathLike = Union[str, Path]


def _umask() -> int:
    """The process's umask, read where Linux reports it (``/proc/self/status``): setting it to read it, the only
    other way, would race with other threads creating files meanwhile."""
    with contextlib.suppress(OSError, ValueError):
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    mask = os.umask(0)  # elsewhere (other systems, Linux before 4.7)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders: POSIX only; Windows cannot open them)."""
    if os.name == 'nt' and path.is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_existing(target: PathLike) -> None:
    """Raise ``FileExistsError`` unless ``target`` is free (absent, or an empty folder), or ``NotADirectoryError`` /
    ``PermissionError`` where it cannot be written (under a file, or in a folder without write permission).

    ``atomic_output_dir`` checks this itself; call it to fail early, before expensive work.
    """
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f'{target} already exists and is not an empty folder: choose a new output folder, '
                              'or delete this one first.')
    _check_can_create(target, 'an output folder')


def check_file_target(target: PathLike) -> None:
    """Raise ``IsADirectoryError``, ``NotADirectoryError`` or ``PermissionError`` unless a file can be written (or
    replaced) at ``target`` by ``save_results``, which creates the folders it lacks: call it before long work, so
    that a typo does not cost the results."""
    target = Path(target)
    if target.is_dir():
        raise IsADirectoryError(f'{target} is a folder: give the path of a file to write.')
    _check_can_create(target, 'a path')


def check_folder_target(target: PathLike) -> None:
    """Raise ``NotADirectoryError`` or ``PermissionError`` unless ``target`` is a folder this process can write in,
    or can be made one (with the folders it lacks): call it before long work that writes there."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f'{target} is a file, not a folder: give a folder (missing folders are created).')
    _check_can_create(target, 'an output folder', inside=True)


def results_file(text: str) -> str:
    """An ``argparse`` type for a results file (``--json``, ``--output``) that ``save_results`` writes when a
    command's work is done: ``check_file_target`` when the command starts, so that a typo does not cost minutes of
    work."""
    try:
        check_file_target(text)
    except OSError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _check_can_create(target: Path, what: str, inside: bool = False) -> None:
    """Raise unless ``target``'s nearest existing ancestor (``target`` itself too, when writing ``inside`` it) is a
    folder this process can write in (tried)."""
    # where the writer will create folders (a dangling link stops it too: it cannot make a folder there)
    where = target.absolute()
    candidates = [where, *where.parents] if inside else where.parents
    ancestor = next(p for p in candidates if p.exists() or p.is_symlink())
    if ancestor.is_symlink() and not ancestor.exists():
        raise NotADirectoryError(f'{target}: {ancestor} is a link to {os.readlink(ancestor)}, which does not '
                                 f'exist: choose {what} elsewhere, or create what the link names.')
    if not ancestor.is_dir():
        raise NotADirectoryError(f'{target}: {ancestor} is a file, not a folder: choose {what} elsewhere.')
    try:  # (a file made and removed: os.access says yes to root where a read-only or virtual file system says no)
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        raise PermissionError(f'{target}: cannot write in {ancestor} ({e.strerror or e}): choose {what} '
                              'elsewhere.') from None


def _publish(tmp: Path) -> None:
    """Give ``tmp``'s contents the usual permissions and flush them to disk, innermost first."""
    mask = _umask()  # mkdtemp (and some writers) make files private: give them the usual permissions
    paths = sorted(tmp.rglob('*'), key=lambda p: len(p.parts), reverse=True) + [tmp]
    for path in paths:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        _fsync(path)


def _swap_in(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``target``; with ``overwrite``, an existing ``target`` folder is renamed aside first,
    then deleted.

    If the final rename fails the old folder is put back. Between the two renames (an instant)
    ``target`` is absent and the old folder is ``.<name>.<random>.old`` beside it. Without ``overwrite``
    the rename itself refuses a ``target`` that became a non-empty folder (or a file) meanwhile.
    """
    if not overwrite:
        try:
            os.rename(tmp, target)  # replaces an empty folder; fails on a non-empty one, or a file
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            raise FileExistsError(f'{target} appeared while it was being written and is not an empty folder: '
                                  'left it as it is; choose a new output folder, or delete this one first.') from e
        return
    if not target.is_dir():
        os.rename(tmp, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.rename(tmp, target)
        return
    old = tmp.with_name(tmp.name[:-len('.partial')] + '.old')  # unique: tmp's name is
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(target: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` when the block succeeds.

    The files are flushed to disk before the rename, and the rename after it. On any error
    the temporary folder (and any parent folder created for it) is removed, so a failed
    write leaves nothing behind and an existing ``target`` untouched.

    Args:
        target: the folder to write.
        overwrite: replace an existing ``target`` folder (it stays as it was until the new one
            is complete; a symbolic link stays, the folder it names is replaced). Without it ``target``
            must be absent or an empty folder.

    Raises:
        FileExistsError: ``target`` is a file, or (without ``overwrite``) a non-empty folder.
    """
    target = Path(target)
    if target.is_symlink():  # replace the folder it names, and keep the link
        target = target.resolve()
    if not overwrite:
        refuse_existing(target)
    elif target.exists() and not target.is_dir():
        raise FileExistsError(f'{target} is a file, not a folder: remove it, or choose another output folder.')
    created: List[Path] = []
    for parent in reversed(target.absolute().parents):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    parent = target.absolute().parent
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}.', suffix='.partial', dir=parent))
    try:
        yield tmp
        _publish(tmp)
        _swap_in(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    _fsync(parent)


def atomic_write_file(path: PathLike, write: Callable[[Path], None]) -> None:
    """Have ``write(tmp)`` write a file at ``tmp``, a temporary name in ``path``'s folder, then flush it and
    rename it to ``path`` (replacing it).

    On error the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.absolute().parent)  # one per call
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private: the usual permissions, as a new file gets
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync(path.absolute().parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` (replacing it) via a flushed temporary file in the same folder
    (``atomic_write_file``)."""
    atomic_write_file(path, lambda tmp: tmp.write_text(text))


def save_results(path: PathLike, text: str) -> Optional[str]:
    """Write a command's results (already shown to the user) to ``path`` with ``atomic_write_text``, creating its
    folder. Returns ``None``, or why it could not be written, in one line (a full disk, a folder gone or not
    writable): the caller says so and fails, rather than lose the run to a traceback."""
    try:
        Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except FileExistsError as e:  # (mkdir's, for a file where a folder should be)
        return f'could not write {path}: {e.filename} is a file, not a folder (the results are printed above)'
    except OSError as e:
        return f'could not write {path}: {e.strerror or e} (the results are printed above)'
    return None
