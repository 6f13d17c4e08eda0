"""Safe reading of torch files: the one place that calls ``torch.load`` (always ``weights_only=True``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import RobustfastError

__all__ = ["read_torch_file"]


def read_torch_file(path: str | Path, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the problem.

    Raises:
        RobustfastError: the file is missing, truncated, not a torch file, or holds objects other than tensors and
            plain values (never retried with ``weights_only=False``).
    """
    path = Path(path)
    if not path.is_file():
        raise RobustfastError(f"{what} {str(path)!r} does not exist; check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a pickle of objects: HTML saved as .pt, a text file, garbage...
            raise RobustfastError(
                f"could not read {what} {str(path)!r}: it is not a torch file (a failed download often saves an HTML "
                "page under the model's name); use an intact copy"
            ) from None
        raise RobustfastError(  # pickled Python objects
            f"{what} {str(path)!r} holds Python objects other than tensors and plain values; robustfast loads "
            "files with weights_only=True and never unpickles arbitrary code. Re-save it as a state_dict"
        ) from None
    except Exception as e:  # truncated zip, HTML saved as .pt, not a torch file at all
        reason = str(e).splitlines()[0].split(". ")[0][:160] if str(e) else type(e).__name__  # torch's first sentence
        raise RobustfastError(
            f"could not read {what} {str(path)!r}: the file is truncated, corrupt or not a torch file "
            f"({type(e).__name__}: {reason}); use an intact copy (an interrupted save never replaces the last one)"
        ) from None
