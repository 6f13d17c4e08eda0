"""Offline datasets for tests, demos and quick benchmarks: no download, images in ``[0, 1]`` as ``(N, 1, H, W)``.

* :func:`load_digits_tensors`: scikit-learn's bundled 8x8 handwritten digits (1,797 images).
* :func:`load_fashion_mnist_tensors`: Fashion-MNIST (28x28) read from the IDX files of the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*.gz``). The files there are re-gzipped, so
  torchvision's checksums reject them; this reader parses the IDX format directly.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ..errors import RobustfastError

__all__ = [
    "FASHION_MNIST_DIR",
    "load_digits_tensors",
    "load_fashion_mnist_tensors",
    "missing_fashion_mnist_files",
    "offline_loaders",
    "read_idx",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs the files (override with ``root=``).
FASHION_MNIST_DIR = Path(os.environ.get("ROBUSTFAST_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array (magic: 0, 0, dtype code, number of dims)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise RobustfastError(f"{path}: not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise RobustfastError(f"{path}: truncated IDX file ({arr.size} values for shape {tuple(dims)})")
    return arr.reshape(dims)


def _subset(x: Tensor, y: Tensor, n: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if n is None or n >= len(x):
        return x, y
    if n < 1:
        raise RobustfastError(f"subset size must be >= 1, got {n}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def missing_fashion_mnist_files(root: str | Path | None = None) -> list[Path]:
    """The Fashion-MNIST IDX files absent from ``root`` (default :data:`FASHION_MNIST_DIR`); empty when all are there.

    Tests and scripts use it to skip, or to say what is missing, before loading anything.
    """
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    return [folder / name for pair in _FMNIST_FILES.values() for name in pair if not (folder / name).is_file()]


def load_fashion_mnist_tensors(
    root: str | Path | None = None, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fashion-MNIST as float ``(N, 1, 28, 28)`` images in ``[0, 1]`` and int64 labels.

    Args:
        root: folder with the four ``*-ubyte.gz`` files (default :data:`FASHION_MNIST_DIR`).
        n_train: keep a random subset of this many training images (default: all 60,000).
        n_test: keep a random subset of this many test images (default: all 10,000).
        seed: seed of the subset selection.

    Returns:
        ``(x_train, y_train, x_test, y_test)``.

    Raises:
        RobustfastError: when the files are missing (install them with ``apt-get install dataset-fashion-mnist``).
    """
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    out: list[Tensor] = []
    for split, n in (("train", n_train), ("test", n_test)):
        paths = [folder / name for name in _FMNIST_FILES[split]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise RobustfastError(
                f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
                "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; `make test` does it as root), or pass "
                "root= (or set ROBUSTFAST_FASHION_MNIST) to a folder holding the IDX files "
                "(train-images-idx3-ubyte.gz, ...)."
            )
        images, labels = (read_idx(p) for p in paths)
        x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
        y = torch.from_numpy(labels.astype(np.int64))
        out.extend(_subset(x, y, n, seed))
    return out[0], out[1], out[2], out[3]


def load_digits_tensors(seed: int = 0, train_fraction: float = 0.75) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` images in ``[0, 1]``, split ``train_fraction`` with a fixed seed.

    Needs scikit-learn (``pip install robustfast[data]``).
    """
    if not 0.0 < train_fraction < 1.0:
        raise RobustfastError(f"train_fraction={train_fraction!r} must be in (0, 1)")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RobustfastError("the digits dataset needs scikit-learn: pip install 'robustfast[data]'") from e
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * len(x))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def offline_loaders(
    name: str,
    *,
    batch_size: int = 128,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    root: str | Path | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled with a seeded generator) and test DataLoaders for ``"digits"`` or ``"fashion_mnist"``."""
    if name == "digits":
        xtr, ytr, xte, yte = load_digits_tensors(seed)
        xtr, ytr = _subset(xtr, ytr, n_train, seed)
        xte, yte = _subset(xte, yte, n_test, seed)
    elif name in ("fashion_mnist", "fmnist", "fashion-mnist"):
        xtr, ytr, xte, yte = load_fashion_mnist_tensors(root, n_train=n_train, n_test=n_test, seed=seed)
    else:
        raise RobustfastError(f"unknown offline dataset {name!r}; choose 'digits' or 'fashion_mnist'")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RobustfastError(f"batch_size={batch_size!r} must be a positive integer")
    train = DataLoader(
        TensorDataset(xtr, ytr), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    test = DataLoader(TensorDataset(xte, yte), batch_size=max(batch_size, 256), shuffle=False)
    return train, test
