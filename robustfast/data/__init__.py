"""Datasets: torchvision loaders (CIFAR-10/100, SVHN, ImageNet) with the papers' augmentation, and offline
real data (scikit-learn's digits, Debian's Fashion-MNIST) for tests, examples and benchmarks. Images in [0, 1]."""

# --- per-example identity (indexed.py) ---
from .indexed import IndexedDataset

# --- offline real data (offline.py) ---
from .offline import (
    FASHION_MNIST_DIR,
    load_digits_tensors,
    load_fashion_mnist_tensors,
    missing_fashion_mnist_files,
    offline_loaders,
    read_idx,
)

# --- validation points held out of a training split (split.py) ---
from .split import holdout_split

# --- torchvision datasets (vision.py) ---
from .vision import (
    DOWNLOAD_TIMEOUT_S,
    VISION_DATASETS,
    VisionDatasetInfo,
    list_vision_datasets,
    vision_dataset,
    vision_loaders,
    vision_transform,
)

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "FASHION_MNIST_DIR",
    "VISION_DATASETS",
    "IndexedDataset",
    "VisionDatasetInfo",
    "holdout_split",
    "list_vision_datasets",
    "load_digits_tensors",
    "load_fashion_mnist_tensors",
    "missing_fashion_mnist_files",
    "offline_loaders",
    "read_idx",
    "vision_dataset",
    "vision_loaders",
    "vision_transform",
]
