"""Per-example identity: datasets that also yield each example's index, for methods with per-example memory."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from ..errors import RobustfastError

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap any map-style dataset so that item ``i`` is ``(x, y, i)``.

    Loaders over it yield ``(x, y, index)`` batches; :class:`~robustfast.training.AdversarialTrainer` passes the
    indices to the attack (``atk(x, y, index)``), so methods that keep per-example memory across epochs (FGSM-PGI's
    prior perturbations) find each example's entry whatever the shuffling.

    Args:
        dataset: a map-style dataset whose items are ``(x, y, ...)`` (extra fields are dropped).

    Example:
        >>> loader = DataLoader(IndexedDataset(train_set), batch_size=128, shuffle=True)
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise RobustfastError("IndexedDataset(dataset): pass a map-style dataset (with __getitem__ and __len__)")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise RobustfastError(f"IndexedDataset: item {i} is not an (x, y) pair")
        return item[0], item[1], i
