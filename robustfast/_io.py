"""Files: the one atomic writer and the one safe reader of torch files (``torch.load`` with ``weights_only=True``).

:func:`atomic_write` writes to a temporary file in the target's folder, flushes it to disk and renames it over
the target (``os.replace`` is atomic on POSIX and Windows), so a crash, a full disk or an error while writing never
damages the previous file. :func:`read_torch_file` never unpickles arbitrary code.
"""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import RobustfastError

__all__ = ["atomic_write", "read_torch_file", "save_torch_file", "write_text"]


def atomic_write(path: str | Path, write: Callable[[IO[Any]], Any], *, binary: bool = True, what: str = "file") -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it and rename it over ``path``.

    The folder is created when missing. On any error the temporary file is removed and the previous ``path`` is
    left as it was; operating-system errors (read-only folder, full disk, no permission) become a
    :class:`RobustfastError` naming the file and the fix.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise RobustfastError(f"could not write {what} {str(path)!r}: {_os_reason(e)}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_torch_file(obj: Any, path: str | Path, what: str = "file") -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f), what=what)


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(text), binary=False, what=what)


def _os_reason(e: OSError) -> str:
    """An operating-system error in a few words, with what to do about it."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        return f"{reason} (the disk is full); free some space or write elsewhere (an earlier file was not touched)"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{reason}; choose a folder you can write to"
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"{reason} (a file stands where a folder is needed, or the other way round); choose another path"
    return f"{reason}; check the path"


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
