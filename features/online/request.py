"""An online request, checked and planned: which views, which keys, where each value goes.

Feature references are ``"view:feature"`` (Feast's spelling) or a feature service's name. Entity
rows are a list of dicts (Feast's SDK), a dict of columns (Feast's HTTP body) or a data frame
(pandas, Polars, a pyarrow Table, as ``get_historical_features`` takes). Every mistake
is one line naming the feature, service, row or key, with the close names when there are some.
A null key value is not a mistake: that row reads as not found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import repeat
from numbers import Integral, Real
from typing import Any

from features.definitions import Feature, FeatureView
from features.errors import OnlineRequestError
from features.names import cut, did_you_mean, shown
from features.online import keys as K
from features.online.read import ViewRead
from features.repo import Definitions

_DICT = {dict}
_FEW = 4  # up to this many entities, a loop costs less than the C-level checks' set-up
_INTS = {int, type(None)}
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _given(names: Iterable[Any]) -> str:
    """The names a caller gave, for an error message: comma-separated, cut to a line."""
    return cut(", ".join(map(str, names)) or "none", 200)


def _is_null(value: Any) -> bool:
    """A null that is not None: pandas' ``NA`` and ``NaT``, or a float NaN (how pandas and numpy
    mark a missing value in a column of keys)."""
    if type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, Real) and not isinstance(value, Integral) and value != value


def _frame_columns(rows: Any, join_keys: Mapping[str, str]) -> Any:
    """A data frame's join key columns (any of the repo's, in the frame's order) as lists of
    Python values, nulls as None, read as the point-in-time read reads entity rows
    (:func:`features.entity_rows.to_table`); anything else as it is. Its other columns (labels,
    anything) are not read. By module name, so no frame library is imported for a list or a
    dict."""
    module = type(rows).__module__.partition(".")[0]
    if module not in ("pyarrow", "pandas", "polars"):
        return rows
    if type(rows).__name__ == "LazyFrame":  # a read does not run a query unasked
        raise OnlineRequestError("entity rows are a polars LazyFrame; expected a DataFrame "
                                 "(call .collect()), a list of dicts or a dict of columns")
    from features.entity_rows import check_unique, to_table
    from features.errors import EntityRowsError

    names = [str(c) for c in (rows.column_names if module == "pyarrow" else rows.columns)]
    keep = [k for k in names if k in join_keys]  # a missing one: entity_columns names it
    try:
        check_unique([n for n in names if n in keep])
        if module == "pandas":
            rows = rows.loc[:, [str(c) in keep for c in rows.columns]]
        else:
            rows = rows.select(keep)
        return to_table(rows).to_pydict()
    except EntityRowsError as e:
        raise OnlineRequestError(str(e)) from None


def _service_object(value: Any) -> bool:
    """A FeatureService object, ours or Feast's: something with a ``name``, not a list."""
    return (not isinstance(value, str | Iterable)
            and isinstance(getattr(value, "name", None), str))


def named(features: Any, feature_service: Any) -> tuple[Any, str | None]:
    """(features, the service's name) of a request: ``features`` may be a FeatureService (as
    Feast takes it), ``feature_service`` a name or the object."""
    if features is not None and _service_object(features):  # Feast's way to give one
        if feature_service is not None:
            raise OnlineRequestError("features is a FeatureService and feature_service is "
                                     "given too; give one of them")
        features, feature_service = None, features
    if feature_service is None or isinstance(feature_service, str):
        return features, feature_service
    if _service_object(feature_service):
        return features, feature_service.name
    raise OnlineRequestError(f"feature_service is {type(feature_service).__name__} "
                             f"{shown(feature_service)}; expected a feature service's name (a "
                             f"str) or a FeatureService")


def lookup(table: Mapping[str, Any], name: Any, kind: str) -> Any:
    """``table[name]``; an unknown name is one line with the close names and every name."""
    found = table.get(name) if isinstance(name, str) else None
    if found is None:
        raise OnlineRequestError(f"unknown {kind} {shown(name)}{did_you_mean(str(name), table)}"
                                 f"; defined: {', '.join(sorted(table)) or 'none'}")
    return found


def resolve(defs: Definitions, features: Sequence[str] | None,
            feature_service: str | None) -> list[tuple[FeatureView, Feature]]:
    """The (view, feature) pairs a request names, in its order."""
    features, feature_service = named(features, feature_service)
    if (features is None) == (feature_service is None):
        raise OnlineRequestError("give either features=['view:feature', ...] or "
                                 "feature_service='name', not both and not neither")
    if feature_service is not None:
        features = list(lookup(defs.services, feature_service, "feature service").features)
    if isinstance(features, str):
        features = [features]
    elif not isinstance(features, list | tuple):
        try:
            features = list(features)  # type: ignore[arg-type]
        except TypeError:
            raise OnlineRequestError(
                f"features is {type(features).__name__} {shown(features)}; expected a list of "
                f"'view:feature' strings") from None
    if not features:
        raise OnlineRequestError("no features requested")
    out = []
    for ref in features:
        if not isinstance(ref, str) or ref.count(":") != 1:
            raise OnlineRequestError(f"feature reference {shown(ref)} is not 'view:feature'")
        view_name, name = ref.split(":")
        view = defs.views.get(view_name)
        if view is None:
            raise OnlineRequestError(f"unknown feature view {shown(view_name)} in {shown(ref)}"
                                     f"{did_you_mean(view_name, defs.views)}")
        names = [f.name for f in view.features]
        if name not in names:
            raise OnlineRequestError(f"feature view {view_name!r} has no feature {shown(name)}"
                                     f"{did_you_mean(name, names)}")
        out.append((view, view.feature(name)))
    return out


@dataclass(frozen=True)
class Plan:
    """A checked request shape: reused for every call with the same features."""

    names: tuple[str, ...]  # output names, request order
    reads: tuple[ViewRead, ...]
    slots: tuple[tuple[int, ...], ...]  # per read: output position of each of its features
    join_keys: tuple[str, ...]  # every join key any view needs, first-seen order
    key_types: Mapping[str, tuple[str, str]]  # join key -> (dtype, view needing it)
    echo: Mapping[str, str]  # every join key of the repo -> dtype: echoed when given
    view_keys: tuple[tuple[int, ...], ...]  # per read: positions of its join keys
    key_parts: tuple[tuple[str, str, str], ...]  # per read: (head, tail, lifetime suffix)
    dtypes: tuple[str, ...]  # output type per name
    timestamps: tuple[int, ...]  # output positions of timestamp values (µs in Redis)

    @classmethod
    def of(cls, project: str, pairs: Sequence[tuple[FeatureView, Feature]],
           full_feature_names: bool, echo: Mapping[str, str] | None = None) -> Plan:
        """The plan of ``pairs``; ``echo``: the repo's join keys (-> dtype), which a response
        echoes when the entity rows give them, as Feast does, needed or not (default: the
        keys the views need)."""
        names: list[str] = []
        by_view: dict[str, tuple[FeatureView, list[Feature], list[int]]] = {}
        for view, f in pairs:
            name = f"{view.name}__{f.name}" if full_feature_names else f.name
            if name in names:
                raise OnlineRequestError(
                    f"feature name {name!r} is requested twice" + (
                        "" if full_feature_names else " (two views share it? pass "
                        "full_feature_names=True)"))
            entry = by_view.setdefault(view.name, (view, [], []))
            entry[1].append(f)
            entry[2].append(len(names))
            names.append(name)
        join_keys: list[str] = []
        key_types: dict[str, tuple[str, str]] = {}
        reads, slots, view_keys, key_parts = [], [], [], []
        for view, feats, positions in by_view.values():
            for e in view.entities:
                if e.join_key not in key_types:
                    key_types[e.join_key] = (e.dtype, view.name)
                    join_keys.append(e.join_key)
            reads.append(ViewRead.of(view, feats))
            slots.append(tuple(positions))
            view_keys.append(tuple(join_keys.index(k) for k in view.join_keys))
            head, tail = K.prefix(project, view.name, view.fingerprint())
            key_parts.append((head, tail, K.LIFETIME))
        dtypes = [""] * len(names)
        for view, feats, positions in by_view.values():
            for f, pos in zip(feats, positions, strict=True):
                dtypes[pos] = view.output_dtype(f)
        echo = {**{k: d for k, (d, _) in key_types.items()}, **(echo or {})}
        return cls(tuple(names), tuple(reads), tuple(slots), tuple(join_keys), key_types, echo,
                   tuple(view_keys), tuple(key_parts), tuple(dtypes),
                   tuple(k for k, dtype in enumerate(dtypes) if dtype == "timestamp"))

    def entity_columns(self, entity_rows: Any) -> tuple[int, dict[str, list[Any]]]:
        """(row count, join key -> values) of the entity rows, checked against the key types.

        The join keys the views need come in the caller's column order, with any other join
        key of the repo the caller gave (echoed as given, as Feast answers them)."""
        if type(entity_rows) is not list and not isinstance(entity_rows, Mapping):
            entity_rows = _frame_columns(entity_rows, self.echo)
        rows = None
        if isinstance(entity_rows, Mapping):
            columns = {}
            for k, v in entity_rows.items():
                if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Iterable):
                    raise OnlineRequestError(f"entities[{shown(k)}] is {type(v).__name__}; "
                                             f"expected a list of values, one per entity")
                columns[str(k)] = v if isinstance(v, list) else list(v)
            lengths = {len(v) for v in columns.values()}
            if len(lengths) > 1:
                raise OnlineRequestError("entity columns have different lengths: " + _given(
                    f"{k}: {len(v)}" for k, v in columns.items()))
            n = lengths.pop() if lengths else 0
            for key in self.join_keys:
                if key not in columns:
                    raise self._no_key("entities have", key, f"given: {_given(sorted(columns))}")
            given = list(columns)
        else:
            if type(entity_rows) is list:
                rows = entity_rows
            elif isinstance(entity_rows, str | bytes) or not isinstance(entity_rows, Iterable):
                raise OnlineRequestError(
                    f"entity rows are {type(entity_rows).__name__} {shown(entity_rows)}; "
                    f"expected a list of dicts, a dict of columns or a data frame")
            else:
                rows = list(entity_rows)
            n = len(rows)
            first = rows[0] if n else None
            given = (list(first) if type(first) is dict or isinstance(first, Mapping)
                     else [])  # the caller's column order (Feast's rows share their columns)
            found = None
            if n > _FEW and set(map(type, rows)) <= _DICT:  # plain dicts: C-level loops
                with suppress(KeyError):  # a key is missing: _row_columns names the row
                    found = {key: list(map(dict.__getitem__, rows, repeat(key)))
                             for key in self.join_keys}
            columns = self._row_columns(rows) if found is None else found
        for key in self.join_keys:
            dtype, view = self.key_types[key]
            column = columns[key]
            if dtype == "int64" and n > _FEW and set(map(type, column)) <= _INTS:
                numbers = column if None not in column else [v for v in column if v is not None]
                if not numbers or (min(numbers) >= _I64_MIN and max(numbers) <= _I64_MAX):
                    continue
            plain = int if dtype == "int64" else str
            echoed = None  # a copy of the column, once a key is not a plain int or str
            for i, value in enumerate(column):
                if value is None:
                    continue
                if type(value) is int and dtype == "int64" and _I64_MIN <= value <= _I64_MAX:
                    continue  # no ABC check
                ok = (isinstance(value, Integral) and not isinstance(value, bool)
                      if dtype == "int64" else isinstance(value, str) and _utf8(value))
                if ok and dtype == "int64" and not _I64_MIN <= int(value) <= _I64_MAX:
                    raise OnlineRequestError(
                        f"entity row {i}: join key {key!r} is {value}, outside int64 (feature "
                        f"view {view!r} keys are -2**63 .. 2**63-1)")
                if not ok and dtype == "string" and isinstance(value, str):
                    raise OnlineRequestError(f"entity row {i}: join key {key!r} is not valid "
                                             f"UTF-8 text: {shown(value)}")
                if not ok and _is_null(value):  # NaN, pandas' NA: a null key, not found
                    if echoed is None:
                        echoed = columns[key] = list(column)
                    echoed[i] = None
                    continue
                if not ok:
                    raise OnlineRequestError(
                        f"entity row {i}: join key {key!r} is {type(value).__name__} "
                        f"{shown(value)}; feature view {view!r} expects {dtype}")
                if type(value) is not plain:  # a numpy int or str: echoed as Python's, as
                    if echoed is None:  # Feast does, so the response is JSON as it is
                        echoed = columns[key] = list(column)  # never the caller's list
                    echoed[i] = plain(value)
        if tuple(given) != self.join_keys:  # another order, or more columns: echo as given
            columns = self._echoed(columns, given, rows)
        return n, columns

    def _echoed(self, columns: dict[str, list[Any]], given: list[Any],
                rows: list[Any] | None) -> dict[str, list[Any]]:
        """The columns a response echoes: the join keys, and the repo's other join keys the
        caller gave, in the caller's order (Feast's); other columns are not echoed."""
        out = {k: columns[k] if k in columns else [r.get(k) for r in rows]  # type: ignore[union-attr]
               for k in given if k in self.echo and (k in columns or rows is not None)}
        for k in self.join_keys:  # all given, but a first row may lack what the others have
            if k not in out:
                out[k] = columns[k]
        return out

    def _row_columns(self, rows: list[Any]) -> dict[str, list[Any]]:
        """Join key -> values of entity rows given as dicts or other mappings; a row that is
        not a mapping or lacks a key is an error naming it."""
        n = len(rows)
        columns: dict[str, list[Any]] = {key: [None] * n for key in self.join_keys}
        for i, row in enumerate(rows):
            if type(row) is not dict and not isinstance(row, Mapping):
                raise OnlineRequestError(f"entity row {i} is {type(row).__name__}, expected a "
                                         f"dict of join keys")
            for key in self.join_keys:
                if key not in row:
                    raise self._no_key(f"entity row {i} has", key,
                                       f"the row has: {_given(row) if row else 'nothing'}")
                columns[key][i] = row[key]
        return columns

    def _no_key(self, subject: str, key: str, given: str) -> OnlineRequestError:
        view = self.key_types[key][1]
        return OnlineRequestError(f"{subject} no join key {key!r} (feature view {view!r} needs "
                                  f"it; {given})")
