"""timm_stra.atomic: folders and text files appear complete or not at all, on a real file system."""
import contextlib
import os
import re
import threading
from pathlib import Path

import pytest

from timm_stra.atomic import atomic_output_dir, atomic_write_text, check_file_target, refuse_existing, save_results


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob('*')) if p.is_file()}


def _old_folder(tmp_path):
    target = tmp_path / 'out'
    (target / 'sub').mkdir(parents=True)
    (target / 'a.txt').write_text('old a')
    (target / 'sub' / 'b.txt').write_text('old b')
    return target


def test_new_folder_appears_complete_with_usual_permissions(tmp_path):
    target = tmp_path / 'new' / 'out'
    with atomic_output_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith('.out.') and not target.exists()
        (tmp / 'a.txt').write_text('a')
    assert _tree(target) == {'a.txt': 'a'}
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (target / 'a.txt').stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ['out']


def test_existing_folder_is_refused_without_overwrite(tmp_path):
    target = _old_folder(tmp_path)
    with pytest.raises(FileExistsError, match='already exists'):
        with atomic_output_dir(target):
            pass
    assert _tree(target) == {'a.txt': 'old a', 'sub/b.txt': 'old b'}


@pytest.mark.parametrize('appears', ['folder', 'empty folder', 'file'])
def test_what_appears_meanwhile_is_kept_without_overwrite(tmp_path, appears):
    target = tmp_path / 'out'
    with pytest.raises(FileExistsError, match='appeared while it was being written') if appears != 'empty folder' \
            else contextlib.nullcontext():
        with atomic_output_dir(target) as tmp:
            (tmp / 'a.txt').write_text('new a')
            if appears == 'file':
                target.write_text('theirs')
            else:
                target.mkdir()
                if appears == 'folder':
                    (target / 'theirs.txt').write_text('theirs')
    if appears == 'empty folder':  # an empty folder is the one case that may be replaced
        assert _tree(target) == {'a.txt': 'new a'}
    elif appears == 'folder':
        assert _tree(target) == {'theirs.txt': 'theirs'}
    else:
        assert target.read_text() == 'theirs'
    assert [p.name for p in tmp_path.iterdir()] == ['out']  # and no litter


def test_overwrite_replaces_an_existing_folder(tmp_path):
    target = _old_folder(tmp_path)
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / 'c.txt').write_text('new c')
        assert _tree(target) == {'a.txt': 'old a', 'sub/b.txt': 'old b'}  # untouched until the block ends
    assert _tree(target) == {'c.txt': 'new c'}  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ['out']  # neither the new folder's temp name nor the old one


def test_failure_mid_write_keeps_the_old_folder_and_leaves_no_litter(tmp_path):
    target = _old_folder(tmp_path)
    with pytest.raises(OSError, match='disk full'):
        with atomic_output_dir(target, overwrite=True) as tmp:
            (tmp / 'a.txt').write_text('half')
            raise OSError('disk full')
    assert _tree(target) == {'a.txt': 'old a', 'sub/b.txt': 'old b'}
    assert [p.name for p in tmp_path.iterdir()] == ['out']


def test_failed_new_folder_removes_the_parents_it_made(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(tmp_path / 'a' / 'b' / 'out', overwrite=True):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_overwrite_refuses_a_file(tmp_path):
    target = tmp_path / 'out'
    target.write_text('a file')
    with pytest.raises(FileExistsError, match='is a file'):
        with atomic_output_dir(target, overwrite=True):
            pass
    assert target.read_text() == 'a file'


def test_write_text_replaces_and_a_failed_write_keeps_the_old_text(tmp_path):
    path = tmp_path / 'latest'
    atomic_write_text(path, 'epoch-0001\n')
    atomic_write_text(path, 'epoch-0002\n')
    assert path.read_text() == 'epoch-0002\n'
    with pytest.raises(UnicodeEncodeError):  # fails while writing the temporary file
        atomic_write_text(path, 'a lone surrogate \udc80')
    assert path.read_text() == 'epoch-0002\n'
    assert [p.name for p in tmp_path.iterdir()] == ['latest']


def test_overwrite_through_a_symbolic_link_replaces_the_folder_it_names(tmp_path):
    target = _old_folder(tmp_path)
    link = tmp_path / 'link'
    link.symlink_to(target, target_is_directory=True)
    with atomic_output_dir(link, overwrite=True) as tmp:
        (tmp / 'c.txt').write_text('new c')
    assert link.is_symlink() and _tree(link) == {'c.txt': 'new c'} == _tree(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['link', 'out']  # the old folder is gone, not set aside


def test_concurrent_writes_of_one_file_each_land_whole(tmp_path):
    """Each write has its own temporary file: two threads writing one path (a picture, a record) cannot share
    it, so each rename lands one whole text and nothing is left over."""
    path = tmp_path / 'record.json'
    texts = [str(i) * 100_000 for i in range(8)]
    errors = []

    def write(text):
        try:
            for _ in range(5):
                atomic_write_text(path, text)
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ['record.json']
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # the usual permissions, not the temp file's private ones


@pytest.mark.parametrize('check', [refuse_existing, check_file_target])
def test_a_target_under_a_file_is_refused_before_any_work(tmp_path, check):
    (tmp_path / 'a-file').write_text('x')
    for target in (tmp_path / 'a-file' / 'out', tmp_path / 'a-file' / 'sub' / 'out'):
        with pytest.raises(NotADirectoryError, match=re.escape(f"{tmp_path / 'a-file'} is a file, not a folder")):
            check(target)


@pytest.mark.skipif(os.geteuid() == 0, reason='root may write anywhere')
@pytest.mark.parametrize('check', [refuse_existing, check_file_target])
def test_a_target_that_cannot_be_written_is_refused_before_any_work(tmp_path, check):
    locked = tmp_path / 'locked'
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match=re.escape(f'cannot write in {locked} (Permission denied)')):
        check(locked / 'new' / 'out')


@pytest.mark.skipif(not Path('/sys/kernel').is_dir(), reason='a Linux virtual file system')
@pytest.mark.parametrize('check', [refuse_existing, check_file_target])
def test_a_file_system_that_takes_no_files_is_refused_even_for_root(check):
    """os.access says yes to root for /sys; a results file there was refused only after the work."""
    with pytest.raises(PermissionError, match=re.escape('cannot write in /sys/kernel (')):
        check(Path('/sys/kernel/timm-stra-results.json'))


@pytest.mark.parametrize('check', [refuse_existing, check_file_target])
def test_a_target_under_a_dangling_link_is_refused(tmp_path, check):
    (tmp_path / 'link').symlink_to(tmp_path / 'gone')
    with pytest.raises(NotADirectoryError, match=re.escape(f"{tmp_path / 'link'} is a link to {tmp_path / 'gone'}, "
                                                           'which does not exist')):
        check(tmp_path / 'link' / 'sub' / 'out.json')


def test_a_results_file_may_replace_a_file_or_need_folders_but_is_not_a_folder(tmp_path):
    (tmp_path / 'old.json').write_text('{}')
    check_file_target(tmp_path / 'old.json')  # replaced, as save_results does
    check_file_target(tmp_path / 'new' / 'deeper' / 'r.json')  # save_results creates the folders
    with pytest.raises(IsADirectoryError, match='is a folder: give the path of a file to write'):
        check_file_target(tmp_path)


def test_reading_the_umask_does_not_change_it_for_other_threads():
    """Setting the umask to read it would race: a thread reading it meanwhile could see 0 and leave it there."""
    from timm_stra.atomic import _umask
    mask = os.umask(0o027)
    try:
        seen, stop = set(), threading.Event()

        def watch():
            while not stop.is_set():
                seen.add(_umask())
        watchers = [threading.Thread(target=watch) for _ in range(4)]
        for t in watchers:
            t.start()
        for _ in range(2000):
            seen.add(_umask())
        stop.set()
        for t in watchers:
            t.join()
        assert seen == {0o027} and _umask() == 0o027
    finally:
        os.umask(mask)


def test_save_results_makes_the_folder_and_says_why_a_write_failed(tmp_path):
    assert save_results(tmp_path / 'new' / 'deeper' / 'r.json', '{}') is None
    assert (tmp_path / 'new' / 'deeper' / 'r.json').read_text() == '{}'
    (tmp_path / 'file').write_text('x')
    problem = save_results(tmp_path / 'file' / 'r.json', '{}')
    assert problem == (f"could not write {tmp_path / 'file' / 'r.json'}: {tmp_path / 'file'} is a file, not a folder "
                       '(the results are printed above)')
    problem = save_results(tmp_path / 'file' / 'sub' / 'r.json', '{}')
    assert problem == (f"could not write {tmp_path / 'file' / 'sub' / 'r.json'}: Not a directory "
                       '(the results are printed above)')


def test_a_failed_final_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    """overwrite renames the old folder aside, then the new one into place: if that second rename fails, the old
    folder is renamed back, and neither the new folder nor the old one's temporary name is left beside it."""
    target = _old_folder(tmp_path)
    rename = os.rename

    def failing_rename(src, dst):
        if str(src).endswith('.partial') and Path(dst) == target:
            raise OSError('rename failed')
        rename(src, dst)
    monkeypatch.setattr('timm_stra.atomic.os.rename', failing_rename)
    with pytest.raises(OSError, match='rename failed'):
        with atomic_output_dir(target, overwrite=True) as tmp:
            (tmp / 'c.txt').write_text('new c')
    assert _tree(target) == {'a.txt': 'old a', 'sub/b.txt': 'old b'}
    assert [p.name for p in tmp_path.iterdir()] == ['out']


def test_every_file_and_folder_is_flushed_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    """What is promised against a power cut: each written file and folder (innermost first) reaches the disk under
    its temporary name, then the folder that receives the rename does."""
    target = tmp_path / 'out'
    flushed = []
    monkeypatch.setattr('timm_stra.atomic._fsync', lambda path: flushed.append((Path(path), target.exists())))
    with atomic_output_dir(target) as tmp:
        (tmp / 'sub').mkdir()
        (tmp / 'a.txt').write_text('a')
        (tmp / 'sub' / 'b.txt').write_text('b')
    before = [path for path, renamed in flushed if not renamed]
    assert set(before) == {tmp / 'a.txt', tmp / 'sub', tmp / 'sub' / 'b.txt', tmp}
    assert before.index(tmp / 'sub' / 'b.txt') < before.index(tmp / 'sub') < before.index(tmp)
    assert flushed[-1] == (tmp_path, True) and len(flushed) == len(before) + 1
