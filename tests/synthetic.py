"""Tiny data sets in the real published formats, generated with PIL for the task tests.

Images of one identity / class share a colour pattern (plus noise), so a few training
steps can learn something.
"""
import io
import pickle
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image


def _pattern(label: int, size, rng: np.random.Generator, grey: bool = False, noise: float = 20.,
             shift: float = 0.) -> Image.Image:
    h, w = size
    base = np.random.default_rng(1000 + label).integers(0, 256, (4, 2, 1 if grey else 3))
    img = np.kron(base, np.ones((h // 4 + 1, w // 2 + 1, 1)))[:h, :w] + shift
    img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img[..., 0] if grey else img, 'L' if grey else 'RGB')


def make_market1501(root: Path, train_ids=(1, 2, 3, 4), test_ids=(5, 6, 7), cams=3, per_cam=2,
                    size=(64, 32), seed=0) -> Path:
    """A Market-1501 tree: train IDs in bounding_box_train/, one query per test ID and camera 1,
    the rest of each test ID in bounding_box_test/, plus junk (-1) and distractor (0000) images.
    Cameras shift the brightness and the noise is strong, so rankings are imperfect."""
    rng = np.random.default_rng(seed)
    for sub in ('bounding_box_train', 'query', 'bounding_box_test'):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def save(sub, pid, cam, idx):
        name = f'{pid:04d}' if pid >= 0 else '-1'
        img = _pattern(max(pid, 0), size, rng, noise=60., shift=40. * (cam - 2))
        img.save(root / sub / f'{name}_c{cam}s1_{idx:06d}_01.jpg', quality=90)

    for pid in train_ids:
        for cam in range(1, cams + 1):
            for i in range(per_cam):
                save('bounding_box_train', pid, cam, i)
    for pid in test_ids:
        save('query', pid, 1, 0)
        for cam in range(1, cams + 1):
            for i in range(per_cam):
                save('bounding_box_test', pid, cam, 10 + i)
    save('bounding_box_test', -1, 2, 99)
    save('bounding_box_test', 0, 3, 98)
    return root


def one_thread_fixture():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_face_folders(root: Path, ids=4, per_id=6, size=(40, 40), seed=0) -> Path:
    """ROOT/<identity>/<n>.jpg."""
    rng = np.random.default_rng(seed)
    for pid in range(ids):
        folder = root / f'id_{pid:03d}'
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_id):
            _pattern(pid, size, rng).save(folder / f'{i}.jpg', quality=90)
    return root


def face_bin_bytes(pairs=10, size=(40, 40), seed=0) -> bytes:
    """An insightface .bin: pickle of (list of 2n JPEG bytes, list of n bools), half same, half different."""
    rng = np.random.default_rng(seed)
    bins: List[bytes] = []
    issame: List[bool] = []
    for j in range(pairs):
        same = j % 2 == 0
        a, b = j % 4, (j % 4 if same else (j + 1) % 4)
        for label in (a, b):
            buf = io.BytesIO()
            _pattern(label, size, rng).save(buf, format='JPEG', quality=90)
            bins.append(buf.getvalue())
        issame.append(same)
    return pickle.dumps((bins, issame), protocol=pickle.HIGHEST_PROTOCOL)


def make_fer2013(path: Path, per_class=(6, 2, 2), seed=0, classes=7) -> Path:
    """fer2013.csv with `per_class` rows of each class for Training, PublicTest, PrivateTest."""
    rng = np.random.default_rng(seed)
    rows = ['emotion,pixels,Usage']
    for usage, count in zip(('Training', 'PublicTest', 'PrivateTest'), per_class):
        for c in range(classes):
            for _ in range(count):
                pixels = np.asarray(_pattern(c, (48, 48), rng, grey=True)).reshape(-1)
                rows.append(f'{c},{" ".join(map(str, pixels))},{usage}')
    path.write_text('\n'.join(rows) + '\n')
    return path
