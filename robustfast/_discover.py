"""Import method files so that they register themselves (no list to edit): the library's own packages, the user's
files and modules named on the command line (``--import``, ``ROBUSTFAST_IMPORT``) and installed packages' entry points.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import sys
import traceback
from pathlib import Path
from typing import Any

from .errors import RobustfastError

__all__ = ["import_entry_points", "import_submodules", "import_user_methods", "split_imports"]


def import_submodules(package: str, namespace: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """Import the public modules of ``package`` (sorted by name) and copy each module's ``__all__`` into
    ``namespace``; returns the names copied. Modules starting with ``_`` and those in ``skip`` are left out."""
    pkg = importlib.import_module(package)
    names: list[str] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for name in getattr(module, "__all__", ()):
            if name not in namespace or namespace[name] is getattr(module, name):
                namespace[name] = getattr(module, name)
                if name not in names:
                    names.append(name)
    return names


#: Environment variable naming user method files or modules for the command line (separated by ``os.pathsep``
#: or commas), e.g. ``ROBUSTFAST_IMPORT=./my_method.py``.
IMPORT_ENV = "ROBUSTFAST_IMPORT"
#: Entry-point group through which installed packages add methods (``[project.entry-points."robustfast.methods"]``).
ENTRY_POINT_GROUP = "robustfast.methods"


def split_imports(text: str | None) -> list[str]:
    """``"a.py:pkg.mod,b.py"`` -> ``["a.py", "pkg.mod", "b.py"]`` (the environment variable's format)."""
    if not text:
        return []
    parts = [p for chunk in text.split(os.pathsep) for p in chunk.split(",")]
    return [p.strip() for p in parts if p.strip()]


def import_user_methods(specs: list[str]) -> list[str]:
    """Import user method files (``path/to/file.py``) or modules (``pkg.module``) so their parts register.

    A file is imported as module ``robustfast_user.<stem>_<hash of its path>`` (once: importing the same file again
    is a no-op; two files of the same name in different folders are two modules). Returns the module names.

    Raises:
        RobustfastError: a missing file or module, or an exception inside it (named in one line, with the line).
    """
    names = []
    for spec in specs:
        path = Path(spec).expanduser()
        try:
            if spec.endswith(".py") or path.is_file():
                if not path.is_file():
                    raise RobustfastError(f"--import {spec}: no such file")
                digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
                name = f"robustfast_user.{path.stem}_{digest}"
                if name not in sys.modules:
                    loader_spec = importlib.util.spec_from_file_location(name, path.resolve())
                    if loader_spec is None or loader_spec.loader is None:
                        raise RobustfastError(f"--import {spec}: not a Python file")
                    module = importlib.util.module_from_spec(loader_spec)
                    sys.modules[name] = module
                    try:
                        loader_spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[name]
                        raise
            else:
                name = importlib.import_module(spec).__name__
        except RobustfastError:
            raise
        except ModuleNotFoundError as e:
            if e.name and spec.startswith(e.name):
                raise RobustfastError(f"--import {spec}: no module named {e.name!r} (pass a file path ending in .py, "
                                      "or a module importable from here)") from None  # fmt: skip
            raise RobustfastError(f"--import {spec}: it imports {e.name!r}, which is not installed") from None
        except Exception as e:  # the user's code failed: say where, in one line
            tb = traceback.extract_tb(e.__traceback__)
            where = next((f" (line {f.lineno} of {f.filename})" for f in reversed(tb) if f.filename.endswith(
                path.name if spec.endswith(".py") else ".py")), "")  # fmt: skip
            raise RobustfastError(f"--import {spec} failed: {type(e).__name__}: {e}{where}") from None
        names.append(name)
    return names


def import_entry_points() -> list[str]:
    """Import the modules that installed packages declare in the ``robustfast.methods`` entry-point group."""
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise RobustfastError(f"the {ENTRY_POINT_GROUP} entry point {ep.name!r} ({ep.value}) failed to import: "
                                  f"{type(e).__name__}: {e}") from None  # fmt: skip
        names.append(ep.value)
    return names
