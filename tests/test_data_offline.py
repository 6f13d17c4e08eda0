"""Offline datasets: IDX reader, Fashion-MNIST and digits tensors/loaders, and the missing-files error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robustfast.data import (
    FASHION_MNIST_DIR,
    load_digits_tensors,
    load_fashion_mnist_tensors,
    missing_fashion_mnist_files,
    offline_loaders,
    read_idx,
)
from robustfast.errors import RobustfastError


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fmnist(root: Path, n: int = 12) -> None:
    rng = np.random.default_rng(0)
    for split, m in (("train", n), ("t10k", n // 2)):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (m, 28, 28)))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (m,)))


def test_read_idx_roundtrip_and_bad_magic(tmp_path: Path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(RobustfastError, match="IDX"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_folder_and_subsets(tmp_path: Path):
    _fake_fmnist(tmp_path)
    xtr, ytr, xte, yte = load_fashion_mnist_tensors(tmp_path, n_train=5)
    assert xtr.shape == (5, 1, 28, 28) and xte.shape == (6, 1, 28, 28) and xtr.dtype == torch.float32
    assert 0 <= xtr.min() and xtr.max() <= 1 and ytr.dtype == torch.int64 and yte.max() < 10
    train, test = offline_loaders("fashion_mnist", root=tmp_path, batch_size=4)
    assert len(test.dataset) == 6
    x, y = next(iter(train))
    assert x.shape == (4, 1, 28, 28) and y.shape == (4,)


def test_missing_fashion_mnist_names_the_package(tmp_path: Path):
    assert len(missing_fashion_mnist_files(tmp_path)) == 4
    _fake_fmnist(tmp_path)
    assert missing_fashion_mnist_files(tmp_path) == []
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert missing_fashion_mnist_files(tmp_path) == [tmp_path / "t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(RobustfastError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist_tensors(tmp_path)


def test_real_fashion_mnist_test_split(fashion_mnist: Path):
    assert fashion_mnist == FASHION_MNIST_DIR
    _, _, xte, yte = load_fashion_mnist_tensors(n_train=10)
    assert xte.shape == (10000, 1, 28, 28) and torch.equal(yte.bincount(), torch.full((10,), 1000))


def test_digits():
    xtr, ytr, xte, yte = load_digits_tensors(seed=0)
    assert len(ytr) == len(xtr) and set(yte.tolist()) == set(range(10))
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == 1797 and xtr.max() == 1.0 and xtr.min() == 0.0
    with pytest.raises(RobustfastError):
        offline_loaders("mnist")
