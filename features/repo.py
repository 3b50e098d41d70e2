"""Loading a repo's definitions from the Python files ``feature_repo.yaml`` lists.

Each file is executed as a module; every Entity, Source, FeatureView and FeatureService bound to
a module-level name is collected. Rules are data, so nothing is pickled or kept from the module
but these values.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from features.config import RepoConfig
from features.definitions import Entity, FeatureService, FeatureView, Source
from features.errors import DefinitionError


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
                raise DefinitionError(f"{file}: {kind.__name__} name {name!r} is defined twice")
            table[name] = value  # type: ignore[index]


def load_definitions(cfg: RepoConfig) -> Definitions:
    """Execute each definitions file and collect what it defines."""
    defs = Definitions()
    if not cfg.definitions:
        raise DefinitionError(f"{cfg.root / 'feature_repo.yaml'}: definitions: no files listed "
                              f"(expected e.g. definitions: [features.py])")
    for rel in cfg.definitions:
        file = cfg.resolve(rel)
        if not file.is_file():
            raise DefinitionError(f"definitions: file {str(file)!r} does not exist")
        module_name = f"tessera_repo_{file.stem}_{abs(hash(str(file)))}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise DefinitionError(f"definitions: cannot load {str(file)!r} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except DefinitionError as e:
            raise DefinitionError(f"{file}: {e}") from None
        for value in vars(module).values():
            _collect(defs, file, value)
        for view in defs.views.values():  # views reference their entities and source
            for entity in view.entities:
                _collect(defs, file, entity)
            _collect(defs, file, view.source)
    return defs
