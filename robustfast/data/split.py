"""Hold validation points out of a training split, so that validation never touches the test set."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..errors import RobustfastError

__all__ = ["holdout_split"]


def holdout_split(
    dataset: Dataset, n: int, *, seed: int = 0, eval_dataset: Dataset | None = None
) -> tuple[Subset, Tensor, Tensor]:
    """Split ``n`` random points off a training set: the rest to train on, the held-out points as tensors.

    Args:
        dataset: the training split (``len()`` and integer indexing, yielding ``(x, y)``).
        n: number of held-out points, ``1 <= n < len(dataset)``.
        seed: seed of the (reproducible) choice of points (default 0), so a resumed run holds out the same ones.
        eval_dataset: the same points without training augmentation, read for the held-out tensors (default:
            ``dataset`` itself).

    Returns:
        ``(train_subset, x_val, y_val)``: a :class:`~torch.utils.data.Subset` of the other ``len(dataset) - n`` points,
        and the held-out inputs ``(n, ...)`` and int64 labels ``(n,)``, in a seeded random order.

    Raises:
        RobustfastError: ``n`` out of range, or ``eval_dataset`` of another length.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < size:
        raise RobustfastError(
            f"holdout_split(n={n!r}): need 1 <= n < {size} (the training split has {size} points); lower val_examples"
        )
    source = dataset if eval_dataset is None else eval_dataset
    if len(source) != size:  # type: ignore[arg-type]
        raise RobustfastError(f"holdout_split: eval_dataset has {len(source)} points, dataset {size}")  # type: ignore[arg-type]
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n].tolist(), perm[n:].sort().values.tolist()
    items = [source[i] for i in val_idx]
    x = torch.stack([torch.as_tensor(it[0]) for it in items])
    y = torch.tensor([int(it[1]) for it in items], dtype=torch.long)
    return Subset(dataset, train_idx), x, y
