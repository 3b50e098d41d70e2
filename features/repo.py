"""Loading a repo's definitions from the Python files ``feature_repo.yaml`` lists.

Each file is executed as a module; every Entity, Source, FeatureView and FeatureService bound to
a module-level name is collected. Rules are data, so nothing is pickled or kept from the module
but these values.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
import traceback
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from features.config import RepoConfig
from features.definitions import Entity, FeatureService, FeatureView, Source
from features.errors import DefinitionError

#: Top-level packages of Tessera. A definitions file named like one of them (``features.py``)
#: shadows the package for a script run from the file's folder (its folder comes first on
#: ``sys.path``), so ``from features import col`` would import the file itself.
PACKAGES = ("features", "pipelines", "streaming", "validation", "tessera")


class DefinitionWarning(UserWarning):
    """A definitions file loads, but something about it will bite later (e.g. its name)."""


@dataclass(frozen=True)
class Definitions:
    """Everything a repo defines, by name."""

    entities: dict[str, Entity] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    views: dict[str, FeatureView] = field(default_factory=dict)
    services: dict[str, FeatureService] = field(default_factory=dict)

    def select(self, names: list[str] | None) -> list[FeatureView]:
        """Views by name (all when ``names`` is empty), with a hint for a typo."""
        if not names:
            return list(self.views.values())
        missing = [n for n in names if n not in self.views]
        if missing:
            raise DefinitionError(f"no feature view {missing[0]!r} (defined: "
                                  f"{', '.join(self.views) or 'none'})")
        return [self.views[n] for n in names]


def _collect(defs: Definitions, file: Path, value: object) -> None:
    kinds = ((Entity, defs.entities), (Source, defs.sources), (FeatureView, defs.views),
             (FeatureService, defs.services))
    for kind, table in kinds:
        if isinstance(value, kind):
            name = value.name  # type: ignore[attr-defined]
            previous = table.get(name)
            if previous is not None and previous is not value:
                raise DefinitionError(f"{_shown(file)}: {kind.__name__} name {name!r} is "
                                      f"defined twice")
            table[name] = value  # type: ignore[index]


def _shown(file: Path) -> str:
    """``file`` relative to the working folder when it is below it (as editors link it)."""
    try:
        return str(file.relative_to(Path.cwd()))
    except ValueError:
        return str(file)


def _line_in(file: Path, tb: TracebackType | None) -> int | None:
    """Line of the deepest traceback frame that executes ``file`` (None when none does)."""
    line = None
    target = str(file)
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename == target:
            line = lineno
    return line


def _close(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=3)
    return f" (did you mean {' or '.join(repr(n) for n in close)}?)" if close else ""


def _hint(e: BaseException) -> str:
    """``(did you mean 'col'?)`` for a misspelt name, attribute or import; else nothing."""
    if isinstance(e, NameError) and e.name:
        frames = [frame for frame, _ in traceback.walk_tb(e.__traceback__)]
        if frames:
            frame = frames[-1]
            return _close(e.name, {**frame.f_builtins, **frame.f_globals, **frame.f_locals})
    if isinstance(e, AttributeError) and e.name and e.obj is not None:
        return _close(e.name, [n for n in dir(e.obj) if not n.startswith("_")])
    found = re.match(r"cannot import name '([^']+)'", str(e))
    module = sys.modules.get(e.name or "") if isinstance(e, ImportError) else None
    if found is None or module is None:
        return ""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    return _close(found.group(1), names)


def _load_error(file: Path, e: BaseException) -> DefinitionError:
    """One line for an exception raised while executing a definitions file.

    ``file:line: Type: message``, the line being the deepest frame in ``file`` (for a syntax
    error in ``file``, the error's own line). A DefinitionError keeps its message as it is.
    """
    line: int | None
    if isinstance(e, SyntaxError) and e.filename == str(file):
        line, text = e.lineno, f"{type(e).__name__}: {e.msg}"
    else:
        line = _line_in(file, e.__traceback__)
        if isinstance(e, DefinitionError):
            text = str(e)
        else:
            # The stdlib's rendering adds what str(e) may lack (notes, syntax error location).
            exc = traceback.TracebackException.from_exception(e)
            shown = "".join(exc.format_exception_only()).strip()
            qualified = type(e).__qualname__
            if type(e).__module__ not in ("__main__", "builtins"):
                qualified = f"{type(e).__module__}.{qualified}"
            shown = shown.removeprefix(qualified).removeprefix(":").strip()
            parts = [p.strip() for p in shown.splitlines() if p.strip()]
            text = type(e).__name__ + (": " + "; ".join(parts) if parts else "")
            text += _hint(e)
    where = _shown(file) + (f":{line}" if line is not None else "")
    return DefinitionError(f"{where}: {text}")


def _exec_file(file: Path) -> dict[str, object]:
    """Execute one definitions file as a fresh module and return its namespace.

    Raises:
        DefinitionError: the file does not load, as one line naming the file and line.
    """
    module_name = f"tessera_repo_{file.stem}_{abs(hash(str(file)))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"definitions: cannot load {str(file)!r} as Python "
                              f"(expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a definitions file may raise anything; say where
        sys.modules.pop(module_name, None)  # never leave a half-loaded module behind
        raise _load_error(file, e) from e
    return vars(module)


def load_definitions(cfg: RepoConfig) -> Definitions:
    """Execute each definitions file and collect what it defines.

    Raises:
        DefinitionError: a file is missing or does not load (one line: ``file:line: Type:
            message``), or two different definitions share a name.

    Warns:
        DefinitionWarning: a file is named like one of Tessera's packages (``features.py``).
    """
    defs = Definitions()
    if not cfg.definitions:
        raise DefinitionError(f"{cfg.root / 'feature_repo.yaml'}: definitions: no files listed "
                              f"(expected e.g. definitions: [card_features.py])")
    for rel in cfg.definitions:
        file = cfg.resolve(rel)
        if not file.is_file():
            raise DefinitionError(f"definitions: file {str(file)!r} does not exist")
        if file.stem in PACKAGES:
            warnings.warn(
                f"{_shown(file)}: a definitions file named {file.name!r} shadows Tessera's "
                f"{file.stem!r} package for scripts run from its folder; rename it (e.g. "
                f"card_{file.name}) and update definitions: in feature_repo.yaml",
                DefinitionWarning, stacklevel=2)
        for value in _exec_file(file).values():
            _collect(defs, file, value)
        for view in defs.views.values():  # views reference their entities and source
            for entity in view.entities:
                _collect(defs, file, entity)
            _collect(defs, file, view.source)
    return defs
