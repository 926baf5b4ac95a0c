"""The data readers on tiny files in the published formats, including broken and hostile ones."""
import os
import pickle
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic import face_bin_bytes, make_face_folders, make_fer2013, make_market1501
from timm_stra.tasks.data import (
    BadDataError, CheckShare, FaceBinError, FacePairs, Market1501, load_face_bin, parse_market_name, read_fer2013,
    scan_identity_folders)
from timm_stra.tasks.data.check_share import find_undecodable
from timm_stra.tasks.task_data import load_eval_sets


def test_parse_market_names():
    assert parse_market_name('0002_c1s1_000451_03.jpg') == (2, 0)
    assert parse_market_name('-1_c3s2_000101_01.jpg') == (-1, 2)
    assert parse_market_name('0000_c6s3_094992_01.jpg') == (0, 5)
    assert parse_market_name('0005_c2_f0046985.jpg') == (5, 1)  # DukeMTMC-reID
    for name in ('Thumbs.jpg', '0002_c0s1_000451_03.jpg', '0002_c1x.jpg'):  # cameras count from 1
        with pytest.raises(ValueError, match='Market-1501 file name'):
            parse_market_name(name)


def test_market1501_splits_junk_and_distractors(tmp_path):
    make_market1501(tmp_path, train_ids=(3, 8), test_ids=(5, 6), cams=2, per_cam=2)
    data = Market1501.load(tmp_path)
    assert len(data.train) == 8 and data.num_train_ids == 2
    assert sorted(set(data.train.pids)) == [0, 1]  # relabelled
    assert len(data.query) == 2 and data.query.pids == [5, 6] and data.query.camids == [0, 0]
    # 2 IDs x 2 cameras x 2 images, plus the distractor; the junk image is gone
    assert len(data.gallery) == 9
    assert -1 not in data.gallery.pids and data.gallery.pids.count(0) == 1


def test_checking_the_images_shows_a_progress_bar_when_asked(tmp_path, capsys):
    make_market1501(tmp_path)
    Market1501.load(tmp_path)
    assert 'checking images' not in capsys.readouterr().err
    Market1501.load(tmp_path, progress=True)
    assert 'checking images' in capsys.readouterr().err


def test_market1501_missing_folder(tmp_path):
    make_market1501(tmp_path)
    (tmp_path / 'query').rename(tmp_path / 'queries')
    with pytest.raises(FileNotFoundError, match='query'):
        Market1501.load(tmp_path)


def test_market1501_bad_image_stops_or_is_skipped(tmp_path):
    make_market1501(tmp_path)
    bad = tmp_path / 'bounding_box_train' / '0001_c1s1_000007_01.jpg'
    bad.write_bytes(b'not a jpeg')
    with pytest.raises(BadDataError, match=re.escape(str(bad))) as err:
        Market1501.load(tmp_path)
    assert '--skip-bad' in str(err.value)
    data = Market1501.load(tmp_path, skip_bad=True)
    assert data.skipped == 1 and str(bad) not in data.train.paths


def test_market1501_split_without_images_is_refused(tmp_path):
    """An empty query folder (or one left empty by --skip-bad) would crash the first evaluation, after training."""
    make_market1501(tmp_path)
    for path in (tmp_path / 'query').iterdir():
        path.unlink()
    with pytest.raises(BadDataError, match=re.escape(f'{tmp_path / "query"}: no images to use: none named')):
        Market1501.load(tmp_path)
    Market1501.load(tmp_path, splits=('train',))  # training alone does not need it
    (tmp_path / 'bounding_box_train' / '0001_c1s1_000000_01.jpg').write_bytes(b'')  # skipped, but not a query
    with pytest.raises(BadDataError, match=re.escape(f'{tmp_path / "query"}: no images to use: none named')):
        Market1501.load(tmp_path, skip_bad=True)
    (tmp_path / 'query' / '0005_c1s1_000000_01.jpg').write_bytes(b'')
    with pytest.raises(BadDataError, match='all usable ones were skipped as bad \\(1 of them\\)'):
        Market1501.load(tmp_path, skip_bad=True)


def test_market1501_without_a_scorable_query_is_refused(tmp_path):
    """Queries whose identities the gallery shows only under the query's own camera cannot be scored."""
    make_market1501(tmp_path)
    for path in (tmp_path / 'bounding_box_test').glob('000[5-7]_c[23]*'):
        path.unlink()
    with pytest.raises(BadDataError, match='no query identity appears in bounding_box_test/ under another camera'):
        Market1501.load(tmp_path)
    (tmp_path / 'bounding_box_test' / '0006_c2s1_000000_01.jpg').write_bytes(
        (tmp_path / 'query' / '0006_c1s1_000000_01.jpg').read_bytes())
    data = Market1501.load(tmp_path)  # one scorable query is enough (the metrics skip the others)
    assert len(data.query) == 3


def test_face_folders(tmp_path):
    make_face_folders(tmp_path, ids=3, per_id=2)
    (tmp_path / 'empty').mkdir()
    samples, names, skipped = scan_identity_folders(tmp_path)
    assert names == ['id_000', 'id_001', 'id_002'] and skipped == 0
    assert [label for _, label in samples] == [0, 0, 1, 1, 2, 2]
    (tmp_path / 'id_001' / '0.jpg').write_bytes(b'')
    with pytest.raises(BadDataError, match='id_001/0.jpg'):
        scan_identity_folders(tmp_path)
    samples, names, skipped = scan_identity_folders(tmp_path, skip_bad=True)
    assert skipped == 1 and len(samples) == 5 and len(names) == 3
    (tmp_path / 'id_001' / '1.jpg').write_bytes(b'')  # id_001 has no readable image left: no class for it
    samples, names, skipped = scan_identity_folders(tmp_path, skip_bad=True)
    assert skipped == 2 and names == ['id_000', 'id_002']
    assert [(Path(path).parent.name, label) for path, label in samples] == [('id_000', 0)] * 2 + [('id_002', 1)] * 2


def _shares_between_threads(world_size):
    """CheckShares for ``world_size`` threads whose gather meets at a barrier, as all_gather_objects does
    between DDP processes."""
    barrier, parts = threading.Barrier(world_size, timeout=60), [None] * world_size

    def gather_for(rank):
        def gather(findings):
            parts[rank] = findings
            barrier.wait()
            gathered = list(parts)
            barrier.wait()
            return gathered
        return gather
    return [CheckShare(rank, world_size, gather_for(rank)) for rank in range(world_size)]


def _in_threads(fn, shares):
    results, errors = [None] * len(shares), [None] * len(shares)

    def run(rank):
        try:
            results[rank] = fn(shares[rank])
        except Exception as e:
            errors[rank] = e
    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_check_share_splits_the_decoding_and_agrees_on_the_findings():
    decoded = [[], []]

    def decode_for(rank):
        def decode(index):
            decoded[rank].append(index)
            if index in (3, 4):
                raise OSError(f'broken {index}')
        return decode
    shares = _shares_between_threads(2)
    results, errors = _in_threads(lambda share: find_undecodable(7, decode_for(share.rank), share), shares)
    assert errors == [None, None]
    assert decoded == [[0, 2, 4, 6], [1, 3, 5]]  # each image decoded once, by one rank
    assert results[0] == results[1] == [(3, 'OSError: broken 3'), (4, 'OSError: broken 4')]


def test_identity_folders_checked_by_two_ranks_as_by_one(tmp_path):
    make_face_folders(tmp_path, ids=3, per_id=3)
    (tmp_path / 'id_001' / '1.jpg').write_bytes(b'')  # the 5th image: rank 0's share
    (tmp_path / 'id_002' / '0.jpg').write_bytes(b'')  # the 7th: rank 0's too
    (tmp_path / 'id_000' / '1.jpg').write_bytes(b'')  # the 2nd: rank 1's
    alone = scan_identity_folders(tmp_path, skip_bad=True)
    assert alone[2] == 3
    results, errors = _in_threads(lambda share: scan_identity_folders(tmp_path, skip_bad=True, share=share),
                                  _shares_between_threads(2))
    assert errors == [None, None] and results == [alone, alone]
    results, errors = _in_threads(lambda share: scan_identity_folders(tmp_path, share=share),
                                  _shares_between_threads(2))
    assert all(isinstance(e, BadDataError) and 'id_000/1.jpg' in str(e) and '3 unreadable' in str(e) for e in errors)


def test_face_bin_checked_by_two_ranks_names_the_first_broken_image(tmp_path):
    images, issame = pickle.loads(face_bin_bytes(pairs=10))
    images[7] = images[12] = b'\xff\xd8 truncated'
    path = tmp_path / 'lfw.bin'
    path.write_bytes(pickle.dumps((images, issame)))
    pairs = FacePairs(path)
    results, errors = _in_threads(lambda share: pairs.check(share=share), _shares_between_threads(2))
    assert all(isinstance(e, FaceBinError) and 'lfw.bin: image 7 does not decode' in str(e) for e in errors)


def test_face_bin_round_trip(tmp_path):
    path = tmp_path / 'lfw.bin'
    path.write_bytes(face_bin_bytes(pairs=6))
    images, issame = load_face_bin(path)
    assert len(images) == 12 and issame == [True, False] * 3
    pairs = FacePairs(path, transform=lambda img: torch.tensor(img.size))
    assert len(pairs) == 12 and pairs[3][0].tolist() == [40, 40] and pairs.issame.tolist() == issame


def test_face_bins_sharing_a_name_are_refused(tmp_path):
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / 'lfw.bin').write_bytes(face_bin_bytes(pairs=10))
    with pytest.raises(FaceBinError, match="are both named 'lfw'"):
        load_eval_sets('face', tmp_path, transform=None, face_bins=[tmp_path / 'a' / 'lfw.bin',
                                                                    tmp_path / 'b' / 'lfw.bin'])


def test_face_bin_written_by_python2_style_protocol(tmp_path):
    # protocol 2 from Python 3 stores bytes as _codecs.encode(str, 'latin1'): accepted
    bins, issame = pickle.loads(face_bin_bytes(pairs=2))
    path = tmp_path / 'old.bin'
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))
    assert load_face_bin(path) == (bins, issame)


@pytest.mark.parametrize('protocol', [2, 4, 5])
@pytest.mark.parametrize('as_array', [False, True], ids=['scalars', 'array'])
def test_face_bin_flags_packed_from_numpy(tmp_path, protocol, as_array):
    """Flags that are ``numpy.bool_`` scalars or a boolean array are read as Python bools, through the stand-ins
    (the file names NumPy's own functions: scalar, or _reconstruct / _frombuffer)."""
    bins, issame = pickle.loads(face_bin_bytes(pairs=4))
    flags = np.array(issame) if as_array else [np.bool_(s) for s in issame]
    path = tmp_path / 'numpy.bin'
    path.write_bytes(pickle.dumps((bins, flags), protocol=protocol))
    assert b'numpy' in path.read_bytes()
    images, read = load_face_bin(path)
    assert images == bins and read == issame and all(type(s) is bool for s in read)


@pytest.mark.parametrize('flags, message', [
    (np.array([1.0, 0.0, 1.0, 0.0]), "numpy dtype 'f8' is not allowed"),
    (np.array([[True, False], [True, False]]), 'must be one-dimensional'),
    ([np.float64(1.0)] * 4, "numpy dtype 'f8' is not allowed"),
    (np.array([1, 0, 1, 0], dtype=np.int8), "numpy dtype 'i1' is not allowed"),
])
def test_face_bin_numpy_flags_other_than_booleans_refused(tmp_path, flags, message):
    bins, _ = pickle.loads(face_bin_bytes(pairs=2))
    path = tmp_path / 'odd.bin'
    path.write_bytes(pickle.dumps((bins, flags), protocol=2))
    with pytest.raises(FaceBinError, match=message):
        load_face_bin(path)


def test_face_bin_numpy_flag_bytes_checked(tmp_path):
    """A boolean whose byte is neither 0 nor 1 (NumPy itself would read it as True) is refused as corrupt."""
    bins, _ = pickle.loads(face_bin_bytes(pairs=1))
    data = pickle.dumps((bins, [np.True_]), protocol=4)
    assert data.count(b'C\x01\x01') == 1  # SHORT_BINBYTES b'\x01': the flag's byte
    (tmp_path / 'odd.bin').write_bytes(data.replace(b'C\x01\x01', b'C\x01\x02'))
    with pytest.raises(FaceBinError, match='neither 0 nor 1'):
        load_face_bin(tmp_path / 'odd.bin')


def _after_the_array_state(data: bytes, insert) -> bytes:
    """``data`` (a protocol-2 pickle whose last BUILD gives a NumPy array its state) with ``insert(state_memo)``
    spliced in after that BUILD."""
    import pickletools
    ops = list(pickletools.genops(data))
    last = max(i for i, (op, _, _) in enumerate(ops) if op.name == 'BUILD')
    state_memo = ops[last - 1][1]  # the BINPUT that memoised the state tuple just before it
    cut = ops[last][2] + 1
    return data[:cut] + insert(state_memo) + data[cut:]


@pytest.mark.parametrize('crafted, message', [
    (lambda memo: b'h' + bytes([memo]) + b'b', 'an array given its state twice'),  # BINGET state; BUILD again
    (lambda memo: b'\x88a', "object has no attribute 'append'"),  # NEWTRUE; APPEND a flag to the array
])
def test_face_bin_numpy_array_cannot_be_given_other_flags(tmp_path, crafted, message):
    """What NumPy would read differently or refuse (an array's state given twice: NumPy replaces, a list would
    extend; a flag appended) is refused, not accepted with more flags than the array declares."""
    bins, _ = pickle.loads(face_bin_bytes(pairs=3))
    data = pickle.dumps((bins, np.array([True, False, True])), protocol=2)
    (tmp_path / 'odd.bin').write_bytes(_after_the_array_state(data, crafted))
    with pytest.raises(FaceBinError, match=message):
        load_face_bin(tmp_path / 'odd.bin')


def test_face_bin_numpy_array_of_protocol_5_cannot_be_appended_to(tmp_path):
    """Protocol 5 builds the array with _frombuffer: its flags come as a tuple, which a flag cannot be appended to
    (NumPy's array has no append either)."""
    import pickletools
    bins, _ = pickle.loads(face_bin_bytes(pairs=3))
    data = pickle.dumps((bins, np.array([True, False, True])), protocol=5)
    assert b'_frombuffer' in data
    array = max(pos for op, _, pos in pickletools.genops(data) if op.name == 'REDUCE')  # the array's (the last)
    (tmp_path / 'odd.bin').write_bytes(data[:array + 1] + b'\x88a' + data[array + 1:])  # NEWTRUE; APPEND
    with pytest.raises(FaceBinError, match="'tuple' object has no attribute 'append'"):
        load_face_bin(tmp_path / 'odd.bin')


def test_face_bin_cannot_set_attributes_on_what_it_names(tmp_path):
    """pickle's BUILD on a global would set attributes on it for the rest of the process (here the latin1
    decoder's defaults): refused, and nothing changed."""
    from timm_stra.tasks.data.pair_unpickler import latin1_encode
    payload = (b'\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__X\x04\x00\x00\x00utf8\x85s\x86b'
               b'0N.')  # GLOBAL _codecs.encode; BUILD (None, {'__defaults__': ('utf8',)}); POP; None
    (tmp_path / 'evil.bin').write_bytes(payload)
    with pytest.raises(FaceBinError, match='sets attributes on a global'):
        load_face_bin(tmp_path / 'evil.bin')
    assert latin1_encode.__defaults__ == ('latin1',)
    bins, issame = pickle.loads(face_bin_bytes(pairs=2))
    (tmp_path / 'old.bin').write_bytes(pickle.dumps((bins, issame), protocol=2))
    assert load_face_bin(tmp_path / 'old.bin') == (bins, issame)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_face_bin_never_runs_code(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.bin'
    path.write_bytes(pickle.dumps(([_Payload(str(marker))], [True])))
    with pytest.raises(FaceBinError, match='not allowed'):
        load_face_bin(path)
    assert not marker.exists()


@pytest.mark.parametrize('payload, message', [
    ((['text', 'text'], [True]), 'list of bytes'),
    (([b'a', b'b'], [1]), 'booleans'),
    (([b'a', b'b', b'c'], [True]), '3 images for 1 pairs'),
    (([], []), '0 images for 0 pairs'),  # an empty pair list: nothing to score
    ({'bins': []}, 'not a pair'),
])
def test_face_bin_unexpected_structure(tmp_path, payload, message):
    path = tmp_path / 'odd.bin'
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(FaceBinError, match=message):
        load_face_bin(path)


def test_face_bin_not_a_pickle(tmp_path):
    path = tmp_path / 'junk.bin'
    path.write_bytes(b'\x00\x01garbage')
    with pytest.raises(FaceBinError, match='refused'):
        load_face_bin(path)


def test_fer2013_reads_splits(tmp_path):
    make_fer2013(tmp_path / 'fer2013.csv', per_class=(2, 1, 1))
    splits, skipped = read_fer2013(tmp_path)  # the folder holding fer2013.csv works too
    images, labels = splits['Training']
    assert skipped == 0 and images.shape == (14, 48, 48) and images.dtype == torch.uint8
    assert labels.tolist() == [c for c in range(7) for _ in range(2)]
    assert len(splits['PublicTest'][1]) == 7 and len(splits['PrivateTest'][1]) == 7


def test_fer2013_malformed_rows_named_by_line(tmp_path):
    path = make_fer2013(tmp_path / 'fer2013.csv', per_class=(1, 1, 1))
    lines = path.read_text().splitlines()
    lines[2] = '3,' + ' '.join(['7'] * 2303) + ',Training'  # line 3: one pixel short
    lines[5] = '9,' + lines[5].split(',', 1)[1]  # line 6: no such emotion
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(BadDataError) as err:
        read_fer2013(path)
    assert f'{path}:3' in str(err.value) and '2303 pixel values' in str(err.value)
    assert f'{path}:6' in str(err.value) and 'emotion 9' in str(err.value)
    splits, skipped = read_fer2013(path, skip_bad=True)
    assert skipped == 2 and sum(len(s[1]) for s in splits.values()) == 19


def test_fer2013_huge_pixel_value_is_a_malformed_row(tmp_path):
    path = make_fer2013(tmp_path / 'fer2013.csv', per_class=(1, 1, 1))
    lines = path.read_text().splitlines()
    lines[3] = '3,' + '9' * 25 + ' 0' * 2303 + ',Training'  # line 4: too large for any integer array
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(BadDataError, match=re.escape(f'{path}:4: malformed row (pixel values must be 0..255)')):
        read_fer2013(path)
    assert read_fer2013(path, skip_bad=True)[1] == 1


_ZEROS = ' 0' * 2303


@pytest.mark.parametrize('row, problem', [
    ('3,256' + _ZEROS + ',Training', 'pixel values must be 0..255'),
    ('3,-1' + _ZEROS + ',Training', 'pixel values must be 0..255'),  # (a uint8 array would read 255)
    ('7,0' + _ZEROS + ',Training', 'emotion 7 is not in 0..6'),
    ('3,0' + _ZEROS + ',Training,extra', 'wrong number of fields'),
    ('3,0' + _ZEROS, 'wrong number of fields'),
    ('3,0' + _ZEROS + ',Foo', "Usage 'Foo' is not one of Training, PublicTest, PrivateTest"),
])
def test_fer2013_row_outside_the_format_is_named_or_skipped(tmp_path, row, problem):
    """Values outside the published format (grey levels 0..255, emotions 0..6, three fields, the three splits)
    are a malformed row named by its line, skipped and counted with skip_bad; never read as something else."""
    path = make_fer2013(tmp_path / 'fer2013.csv', per_class=(1, 1, 1))
    lines = path.read_text().splitlines()
    lines[3] = row  # line 4
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(BadDataError, match=re.escape(f'{path}:4: malformed row ({problem})')):
        read_fer2013(path)
    splits, skipped = read_fer2013(path, skip_bad=True)
    assert skipped == 1 and sum(len(labels) for _, labels in splits.values()) == 20
    assert splits['Training'][1].tolist() == [0, 1, 3, 4, 5, 6]  # (line 4 held the Training row of class 2)


@pytest.mark.parametrize('text', [b'0,"1 2 3,Training\n', b'0,\xff\xfe 1,Training\n'])
def test_fer2013_unreadable_text_is_named(tmp_path, text):
    """An unclosed quote (the csv module then reads the rest as one field) or bytes that are not UTF-8."""
    path = make_fer2013(tmp_path / 'fer2013.csv', per_class=(1, 1, 1))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b''.join(lines[:3]) + text + b''.join(lines[4:]))
    with pytest.raises(BadDataError, match=re.escape(f'{path}: cannot be read as CSV text after line ') + '[23]'):
        read_fer2013(path, skip_bad=True)


def test_fer2013_bad_header(tmp_path):
    path = tmp_path / 'fer2013.csv'
    path.write_text('label,data\n0,1 2 3\n')
    with pytest.raises(BadDataError, match='lacks the columns emotion, pixels, Usage: ') as e:
        read_fer2013(path, skip_bad=True)
    assert '--skip-bad' not in str(e.value)  # a header cannot be skipped
    path.write_text('emotion,pix,Usage\n0,1 2 3,Training\n')
    with pytest.raises(BadDataError, match="the header \\['emotion', 'pix', 'Usage'\\] lacks the column pixels: "):
        read_fer2013(path)


def test_fer2013_messages_quote_the_start_of_a_pixel_string(tmp_path):
    """A file without its header, or with its columns in another order, put every 9 kB pixel string in the
    message."""
    path = make_fer2013(tmp_path / 'fer2013.csv', per_class=(1, 1, 1))
    header, *rows = path.read_text().splitlines()
    path.write_text('\n'.join(rows) + '\n')
    with pytest.raises(BadDataError, match=r"the header \['\d+', '[\d ]{24}\.\.\.', 'Training'\] lacks") as e:
        read_fer2013(path)
    assert len(str(e.value)) < 300
    path.write_text('emotion,pixels,Usage\n' + '\n'.join(','.join(r.split(',')[i] for i in (1, 0, 2)) for r in rows))
    with pytest.raises(BadDataError, match=r":2: malformed row \(emotion '[\d ]{24}\.\.\.' is not an integer\)") as e:
        read_fer2013(path)
    assert max(len(line) for line in str(e.value).splitlines()) < len(str(path)) + 100  # (each line was 9 kB)


def test_fer2013_with_a_byte_order_mark(tmp_path):
    """Some editors save CSV files with a UTF-8 byte-order mark before the header."""
    path = make_fer2013(tmp_path / 'fer2013.csv', per_class=(1, 1, 1))
    plain, _ = read_fer2013(path)
    path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())
    splits, skipped = read_fer2013(path)
    assert skipped == 0
    for usage, (images, labels) in plain.items():
        assert torch.equal(splits[usage][0], images) and torch.equal(splits[usage][1], labels)


def test_market_bad_entries_of_every_split_reported_together(tmp_path):
    """Training reads a Market-1501 folder in one pass: a corrupt training image and a badly named query are
    named in one error (the query's used to wait for the next run, once the first was mended)."""
    from timm_stra.tasks.task_data import load_task_data
    root = make_market1501(tmp_path / 'market')
    broken = next((root / 'bounding_box_train').glob('*.jpg'))
    broken.write_bytes(b'\xff\xd8 truncated')
    (root / 'query' / 'bad_name.jpg').write_bytes((next((root / 'query').glob('*.jpg'))).read_bytes())
    with pytest.raises(BadDataError) as e:
        load_task_data('reid', root, None, None)
    assert str(broken) in str(e.value) and 'bad_name.jpg' in str(e.value)
    train, evals = load_task_data('reid', root, None, None, skip_bad=True)
    assert train.skipped + evals.skipped == 2 and len(evals.query) == 3
