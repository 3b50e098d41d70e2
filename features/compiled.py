"""The online read path's modules, compiled: loaded in place of their source only when built
from exactly that source.

``tessera compile`` (run by ``make compile``, ``make test`` and ``make demo``) turns the modules of
:data:`HOT` into C extensions with Cython, plain Python semantics (annotations are not read as
C types), one file per module named by the SHA-256 of its source: ``features.store.<hash>.<abi
suffix>``. Importing :mod:`features` installs :class:`CompiledFinder`, which imports such a file
in place of the module only when the hash of the module's source today names it. A source
edited since its build therefore imports as Python at once, never as its old build: nothing
can run stale. No build, a failed build, or ``TESSERA_PURE_PYTHON=1``: every module imports as
Python, with the same results (the tests compare both).

Why: on a 1 entity x 10 feature read, the Python around the Redis round trip is a third of the
call; compiled, it is ~3-4 µs shorter hot and ~6-8 µs in a real read loop (docs/online.md,
"A compiled read path"). The modules stay the one definition of the read: Cython compiles them
as they are, so nothing is written twice.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

#: The modules a ``get_online_features`` call runs through, SDK and HTTP server alike.
HOT = ("features.store", "features.online.read", "features.online.codec",
       "features.online.request", "features.online.resp", "features.online.redis_store")

#: Part of every artifact's hash: a change of how modules are compiled (Cython's directives,
#: the C flags) is a new build, as a change of source is.
RECIPE = "cython3 -3 annotation_typing=False; cc -O2 -fPIC -fwrapv -fno-strict-aliasing; v1"

PURE_ENV = "TESSERA_PURE_PYTHON"
DIR_ENV = "TESSERA_COMPILED_DIR"


def compiled_dir() -> Path:
    """Where builds live: ``$TESSERA_COMPILED_DIR``, else ``tessera-compiled`` in the
    environment (``.venv/tessera-compiled``), so a new environment starts with none."""
    env = os.environ.get(DIR_ENV)
    return Path(env) if env else Path(sys.prefix) / "tessera-compiled"


def artifact_name(module: str, source: bytes) -> str:
    """The file name a build of ``module`` from ``source`` has (and is looked up by)."""
    digest = hashlib.sha256(RECIPE.encode() + b"\0" + source).hexdigest()[:20]
    return f"{module}.{digest}{importlib.machinery.EXTENSION_SUFFIXES[0]}"


def pure_python() -> bool:
    """True when ``TESSERA_PURE_PYTHON`` asks for every module as Python."""
    return os.environ.get(PURE_ENV, "").strip() not in ("", "0")


def build_of(folder: Path, module: str, source: Path) -> Path:
    """Where ``folder`` holds (or would hold) the build of ``module`` from ``source`` today."""
    return folder / artifact_name(module, source.read_bytes())


def source_of(module: str) -> Path | None:
    """The ``.py`` file of ``module`` (found as Python's own path finder would), or None."""
    parent, _, _ = module.rpartition(".")
    path = None
    if parent:
        pkg = sys.modules.get(parent) or importlib.import_module(parent)
        path = getattr(pkg, "__path__", None)
        if path is None:
            return None
    spec = importlib.machinery.PathFinder.find_spec(module, path)
    origin = None if spec is None else spec.origin
    return Path(origin) if origin and origin.endswith(".py") else None


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Imports a module from its build in ``folder`` when one matches its source's hash.

    Only modules with some build in ``folder`` (listed once, when made) are looked at, so the
    cost for every other import is one set lookup."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names = {m for p in folder.iterdir() if (m := module_of(p.name))}

    def find_spec(self, fullname: str, path: Any = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        origin = None if spec is None else spec.origin
        if not origin or not origin.endswith(".py"):
            return None
        try:
            built = build_of(self.folder, fullname, Path(origin))
        except OSError:
            return None
        if not built.is_file():
            return None  # not built from this source: Python's own finders import the .py
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(built))
        return importlib.util.spec_from_file_location(fullname, built, loader=loader)


def module_of(file_name: str) -> str | None:
    """``features.store`` of ``features.store.<hash>.cpython-311-x86_64-linux-gnu.so``."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if file_name.endswith(suffix):
            stem = file_name[:-len(suffix)]
            module, _, digest = stem.rpartition(".")
            return module if module and len(digest) == 20 else None
    return None


def install() -> CompiledFinder | None:
    """Put a :class:`CompiledFinder` first on ``sys.meta_path`` (once), unless
    ``TESSERA_PURE_PYTHON`` is set or there are no builds."""
    if pure_python():
        return None
    for finder in sys.meta_path:
        if isinstance(finder, CompiledFinder):
            return finder
    folder = compiled_dir()
    try:
        finder = CompiledFinder(folder)
    except OSError:  # no folder: nothing built
        return None
    if not finder.names:
        return None
    sys.meta_path.insert(0, finder)
    return finder


def is_compiled(module: ModuleType) -> bool:
    """True when ``module`` was imported from a build rather than its source."""
    spec = getattr(module, "__spec__", None)
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
