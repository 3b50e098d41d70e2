"""``FeatureStore``: the one object a model or a notebook needs, with Feast's call shapes.

    >>> store = FeatureStore(repo_path=".")                                     # doctest: +SKIP
    >>> store.get_online_features(features=["user_spend:txn_count_1h"],
    ...                           entity_rows=[{"user_id": 1000003}]).to_dict()  # doctest: +SKIP
    {'user_id': [1000003], 'txn_count_1h': [2]}

Online reads come from Redis (:mod:`features.online`), merged at request time; training reads
come from the offline tiles (:mod:`features.historical`). Both finalize with
:mod:`features.tiles`, so the same instant gives equal values on both paths.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig, load_config
from features.errors import OnlineRequestError
from features.names import shown
from features.online.keys import entity_tag
from features.online.request import Plan, lookup, named, resolve
from features.repo import Definitions, load_definitions

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from features.definitions import FeatureService, FeatureView
    from features.online.redis_async import AsyncReads
    from features.online.redis_store import RedisOnline
    from features.online.serving_log import ServingLog
    from pipelines.export import RetrievalJob

_ARROW_TYPES = {"int64": "int64", "float64": "float64", "bool": "bool_", "string": "string"}
_PLAN_CACHE_SIZE = 256
# Entities per MGET of a large read (read()); 100 entities: 2 parts of 50 beat 4 of 25 and one
READ_PART = 50


class OnlineResponse:
    """Feature values of an online read: columns, per-value statuses and event times."""

    def __init__(self, names: Sequence[str], dtypes: Sequence[str], entities: dict[str, list],
                 values: list[list[Any]], statuses: list[list[str]],
                 event_times_us: list[list[int | None]],
                 key_types: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.feature_names = list(names)
        self.key_types = key_types or {}  # join key -> (dtype, view), as Plan.key_types
        self.dtypes = list(dtypes)
        self.entities = entities
        self.values = values
        self.statuses = statuses
        self.event_times_us = event_times_us

    def to_dict(self, include_event_timestamps: bool = False) -> dict[str, list[Any]]:
        """Join keys then features, one list per column (Feast's ``to_dict``).

        With ``include_event_timestamps``, each column is followed by ``<name>__ts``: its event
        times in whole seconds since the epoch, 0 for none and for the join keys, as Feast
        gives them (``event_times_us`` holds them to the microsecond, None for none)."""
        if not include_event_timestamps:
            out: dict[str, list[Any]] = dict(self.entities)
            out.update(zip(self.feature_names, self.values, strict=True))
            return out
        out = {}
        for key, column in self.entities.items():
            out[key] = column
            out[f"{key}__ts"] = [0] * len(column)
        for name, column, times in zip(self.feature_names, self.values, self.event_times_us,
                                       strict=True):
            out[name] = column
            out[f"{name}__ts"] = _seconds(times)
        return out

    def status_dict(self) -> dict[str, list[str]]:
        return dict(zip(self.feature_names, self.statuses, strict=True))

    def to_arrow(self, include_event_timestamps: bool = False) -> pa.Table:
        """The columns of :meth:`to_dict` as typed Arrow columns (int64, float64, bool, string,
        timestamp[us, UTC]); ``__ts`` columns are int64 seconds."""
        import pyarrow as pa

        key_types = {k: getattr(pa, _ARROW_TYPES[d])() for k, (d, _) in self.key_types.items()}
        seconds = pa.int64()
        columns: dict[str, pa.Array] = {}
        for key, column in self.entities.items():
            columns[key] = pa.array(column, key_types.get(key))  # another key: as given
            if include_event_timestamps:
                columns[f"{key}__ts"] = pa.array([0] * len(column), seconds)
        for name, dtype, column, times in zip(self.feature_names, self.dtypes, self.values,
                                              self.event_times_us, strict=True):
            if dtype == "timestamp":
                columns[name] = pa.array(column, pa.timestamp("us", tz="UTC"))
            else:
                columns[name] = pa.array(column, getattr(pa, _ARROW_TYPES[dtype])())
            if include_event_timestamps:
                columns[f"{name}__ts"] = pa.array(_seconds(times), seconds)
        return pa.table(columns)

    def to_df(self, include_event_timestamps: bool = False) -> pd.DataFrame:
        return self.to_arrow(include_event_timestamps).to_pandas()


def _seconds(times: Sequence[int | None]) -> list[int]:
    """Event times as Feast's ``__ts`` columns give them: whole seconds, 0 for none."""
    return [0 if t is None else t // 1_000_000 for t in times]


def _datetime(us: int) -> Any:
    from features.windows import from_micros

    return from_micros(us)


class FeatureStore:
    """A feature repo: its definitions, offline store and online store.

    Args:
        repo_path: the folder holding ``feature_repo.yaml`` (or the file itself).
        config: an already loaded config (then ``repo_path`` is not read).
    """

    def __init__(self, repo_path: str | os.PathLike[str] = ".", *,
                 config: RepoConfig | None = None) -> None:
        self.config = config if config is not None else load_config(Path(repo_path))
        self.definitions: Definitions = load_definitions(self.config)
        self._online: RedisOnline | None = None
        self._aio: AsyncReads | None = None
        self._plans: dict[tuple[Any, ...], Plan] = {}
        # Every join key of the repo -> dtype: a response echoes those the entity rows give.
        self._join_keys = {e.join_key: e.dtype for e in self.definitions.entities.values()}
        self._join_keys.update((e.join_key, e.dtype) for v in self.definitions.views.values()
                               for e in v.entities)
        self.serving_log: ServingLog | None = None
        log_cfg = self.config.serving_log
        if log_cfg.enabled and log_cfg.sample_rate > 0:  # else nothing is made, nothing costs
            from features.online.serving_log import ServingLog

            self.serving_log = ServingLog(log_cfg, self.config.resolve(log_cfg.path))

    @property
    def online(self) -> RedisOnline:
        """The online store connection (opened on first use)."""
        if self._online is None:
            from features.online.redis_store import RedisOnline

            cfg = self.config.online
            self._online = RedisOnline(cfg.url, cluster=cfg.cluster,
                                       timeout_s=cfg.timeout_ms / 1000, spin_us=cfg.spin_us)
        return self._online

    def plan(self, features: Sequence[str] | FeatureService | None = None,
             feature_service: str | FeatureService | None = None,
             full_feature_names: bool = False) -> Plan:
        """The checked shape of a request (cached: the same features plan once)."""
        if type(features) is not list or (feature_service is not None
                                          and type(feature_service) is not str):
            features, feature_service = named(features, feature_service)  # objects: names
        if type(full_feature_names) is not bool:
            _flag("full_feature_names", full_feature_names)
        try:
            cache_key: tuple[Any, ...] | None = (
                None if features is None else tuple(features), feature_service,
                full_feature_names)
            plan = self._plans.get(cache_key)
        except TypeError:  # not a list of names (a list in the list, a number): resolve says
            cache_key, plan = None, None
        if plan is None:
            pairs = resolve(self.definitions, features, feature_service)
            plan = Plan.of(self.config.project, pairs, full_feature_names, self._join_keys)
            if cache_key is not None:
                if len(self._plans) >= _PLAN_CACHE_SIZE:
                    self._plans.clear()
                self._plans[cache_key] = plan
        return plan

    def get_online_features(self, features: Sequence[str] | FeatureService | None = None,
                            entity_rows: Any = (), full_feature_names: bool = False,
                            include_feature_view_version_metadata: bool = False, *,
                            feature_service: str | FeatureService | None = None,
                            now: Any = None) -> OnlineResponse:
        """Feature values now, from Redis, every window merged at request time.

        Args:
            features: ``["view:feature", ...]``, or a FeatureService (as Feast takes it); or
                give ``feature_service``.
            entity_rows: ``[{"user_id": 1}, ...]``, ``{"user_id": [1, ...]}`` or a pandas,
                Polars or pyarrow frame of join keys. A null key reads as not found; a
                missing, mistyped or (int) out-of-int64 key is an error. The response
                echoes the join keys given, in their order (other columns are not read).
            full_feature_names: name outputs ``view__feature``.
            include_feature_view_version_metadata: Feast's flag; accepted, and changes
                nothing (views have no versions here: the rule fingerprint names their state).
            feature_service: the name of a feature service, or the object.
            now: the request instant (a datetime, naive read as UTC; an ISO 8601 string; a numpy
                datetime64; µs since the epoch); default the current time. Values are
                exact for any instant at or after the newest materialized event. A call with
                an explicit ``now`` (a replay, a consistency check) is not live traffic and is
                not written to the serving log.

        Raises:
            OnlineRequestError: unknown feature or service (with close names), bad entity rows.
            OnlineUnavailableError: Redis could not be reached within ``online.timeout_ms``.
        """
        plan = self.plan(features, feature_service, full_feature_names)
        if include_feature_view_version_metadata is not False:
            _flag("include_feature_view_version_metadata", include_feature_view_version_metadata)
        n, columns = plan.entity_columns(entity_rows)
        now_us = _now_us(now)
        response = read(self.online, plan, n, columns, now_us)
        if now is None and self.serving_log is not None:  # a sample, buffered (a few µs)
            self.serving_log.record(plan, response, now_us)
        return response

    async def get_online_features_async(self,
                                        features: Sequence[str] | FeatureService | None = None,
                                        entity_rows: Any = (), full_feature_names: bool = False,
                                        include_feature_view_version_metadata: bool = False, *,
                                        feature_service: str | FeatureService | None = None,
                                        now: Any = None) -> OnlineResponse:
        """:meth:`get_online_features` for asyncio code (Feast's name and call shape): the
        Redis round trip is awaited, so the event loop runs other work meanwhile, and reads
        started together share one connection, pipelined. Same arguments, values, statuses,
        errors and serving log. On Redis Cluster, one connection per master.

        A store's async reads belong to one event loop at a time.
        """
        plan = self.plan(features, feature_service, full_feature_names)
        if include_feature_view_version_metadata is not False:
            _flag("include_feature_view_version_metadata", include_feature_view_version_metadata)
        _, columns = plan.entity_columns(entity_rows)
        now_us = _now_us(now)
        keys, spans = _keys(plan, columns)
        blobs = await self._async_reads().get(keys)
        response = _respond(plan, columns, spans, blobs, now_us)
        if now is None and self.serving_log is not None:  # live traffic only, as above
            self.serving_log.record(plan, response, now_us)
        return response

    def _async_reads(self) -> AsyncReads:
        """The store's event-loop reads (opened on first use)."""
        if self._aio is None:
            from features.online.redis_async import AsyncReads

            self._aio = AsyncReads(self.online)
        return self._aio

    def get_feature_service(self, name: str) -> FeatureService:
        """The feature service ``name`` (for ``get_online_features(features=...)``, as in
        Feast); an unknown name is an error with the close names."""
        return lookup(self.definitions.services, name, "feature service")

    def get_feature_view(self, name: str) -> FeatureView:
        """The feature view ``name``; an unknown name is an error with the close names."""
        return lookup(self.definitions.views, name, "feature view")

    def list_feature_services(self) -> list[FeatureService]:
        return list(self.definitions.services.values())

    def list_feature_views(self) -> list[FeatureView]:
        return list(self.definitions.views.values())

    def materialize(self, start: Any = None, end: Any = None,
                    views: Sequence[str] | None = None) -> list[Any]:
        """Write the offline tiles to Redis (see :mod:`pipelines.materialize`)."""
        from pipelines.materialize import materialize

        return materialize(self.config, self.definitions.select(list(views or [])),
                           self.online, start=start, end=end, show_progress=False)

    def get_historical_features(self, entity_df: Any,
                                features: Sequence[str] | FeatureService | None = None,
                                full_feature_names: bool = False, *,
                                feature_service: str | FeatureService | None = None,
                                allow_uncovered: bool = False,
                                timestamp_field: str | None = None) -> RetrievalJob:
        """Point-in-time values of the features at each entity row's timestamp (a training set).

        Args:
            entity_df: join keys, ``timestamp_field`` and any label columns (all kept, in
                order): a pandas/Polars DataFrame, a pyarrow Table, or a Parquet/CSV path.
            features: ``["view:feature", ...]``, or a FeatureService (as Feast takes it); or
                give ``feature_service``.
            full_feature_names: name outputs ``view__feature``.
            timestamp_field: the rows' time column: default ``event_ts``, else Feast's
                ``event_timestamp``, else the only timestamp column.

        Returns:
            A job: ``to_df()``, ``to_arrow()``, or ``to_parquet(path)`` (out of core, with a
            manifest beside the file). Nothing is computed until one is called.
        """
        from pipelines.export import RetrievalJob

        features, feature_service = named(features, feature_service)  # the manifest's names
        return RetrievalJob.plan(self.config, self.definitions, entity_df, features=features,
                                 feature_service=feature_service,
                                 full_feature_names=full_feature_names,
                                 allow_uncovered=allow_uncovered, timestamp_field=timestamp_field)

    def close(self) -> None:
        """Write the buffered serving log and close the online connection."""
        if self.serving_log is not None:
            self.serving_log.close()
        if self._aio:
            self._aio.close()
        self._aio = None
        if self._online is not None:
            self._online.close()
            self._online = None


def _flag(name: str, flag: Any) -> None:
    """A flag must be a bool (numpy's is as good): "no" is not False."""
    if type(flag) is not bool and type(flag).__name__ != "bool_":
        raise OnlineRequestError(f"{name} is {type(flag).__name__} {shown(flag)}; expected "
                                 f"True or False")


def _now_us(now: Any) -> int:
    """The request instant in µs: ``now`` (a datetime, naive read as UTC; an ISO 8601 string;
    a numpy datetime64; µs since the epoch as an int), or the current time."""
    if now is None:
        return time.time_ns() // 1000
    if type(now) is int:
        return now
    from datetime import datetime
    from numbers import Integral

    from features.windows import parse_instant, to_micros

    if isinstance(now, datetime) and now == now:  # pandas' Timestamp too (NaT != NaT)
        return to_micros(now)
    if isinstance(now, str):
        with suppress(ValueError):
            return to_micros(parse_instant(now))  # type: ignore[arg-type]  # text: never None
    elif type(now).__name__ == "datetime64" and str(now) != "NaT":
        return int(now.astype("datetime64[us]").astype("int64"))
    elif isinstance(now, Integral) and not isinstance(now, bool):  # numpy ints
        return int(now)
    raise OnlineRequestError(f"now is {type(now).__name__} {shown(now)}; expected a datetime, an "
                             f"ISO 8601 string or µs since the epoch as an int")


def read(online: RedisOnline, plan: Plan, n: int, columns: dict[str, list[Any]],
         now_us: int) -> OnlineResponse:
    """One online read: build every key, one ``MGET``, evaluate each view over its entities.

    Past ``READ_PART`` entities, in parts of at most that many, pipelined: every part's
    ``MGET`` is sent before the first is evaluated, so Python evaluates one part while Redis
    serves the next (:meth:`RedisOnline.get_pipelined`)."""
    if n <= READ_PART:
        keys, spans = _keys(plan, columns)
        return _respond(plan, columns, spans, online.get(keys), now_us)
    count = -(-n // READ_PART)
    size = -(-n // count)  # even parts: 120 entities read as 3 x 40, not 50 + 50 + 20
    parts = [{k: columns[k][lo:lo + size] for k in plan.join_keys} for lo in range(0, n, size)]
    part_spans: list[Any] = []  # filled as get_pipelined takes the key lists

    def key_lists() -> Iterator[list[str]]:
        for part in parts:
            keys, spans = _keys(plan, part)
            part_spans.append(spans)
            yield keys

    out: OnlineResponse | None = None
    for i, blobs in enumerate(online.get_pipelined(key_lists())):
        got = _respond(plan, parts[i], part_spans[i], blobs, now_us)
        if out is None:
            out = got
            continue
        pairs: tuple[tuple[list[list[Any]], list[list[Any]]], ...] = (
            (out.values, got.values), (out.statuses, got.statuses),
            (out.event_times_us, got.event_times_us))
        for mine, theirs in pairs:
            for column, more in zip(mine, theirs, strict=True):
                column += more
    assert out is not None
    out.entities = {k: list(v) for k, v in columns.items()}
    return out


def _keys(plan: Plan, columns: dict[str, list[Any]]) -> tuple[list[str], list[Any]]:
    """Every key a read needs, and per view (entity tags, None for a null key, an int key's
    tag its number; position of its first window key; of its first lifetime key; -1 when not
    read)."""
    key_columns = [columns[k] for k in plan.join_keys]
    keys: list[str] = []
    spans = []  # per read: (entity tags, None for a null key; first window key; first lifetime)
    for read_, positions, (head, tail, life) in zip(plan.reads, plan.view_keys, plan.key_parts,
                                                    strict=True):
        if len(positions) == 1:  # one join key (the common case): no list per entity
            tags = [v if v is None or type(v) is int else entity_tag((v,))  # int: its number
                    for v in key_columns[positions[0]]]
        else:
            tags = [None if None in values else entity_tag(values)
                    for values in zip(*[key_columns[p] for p in positions], strict=True)]
        w = lt = -1
        if read_.window:
            w = len(keys)
            keys += [f"{head}{t}{tail}" for t in tags if t is not None]
        if read_.lifetime:
            lt = len(keys)
            keys += [f"{head}{t}{tail}{life}" for t in tags if t is not None]
        spans.append((tags, w, lt))
    return keys, spans


def _respond(plan: Plan, columns: dict[str, list[Any]], spans: list[Any],
             blobs: list[bytes | None], now_us: int) -> OnlineResponse:
    """The response from the values of :func:`_keys`' keys: each view evaluated at ``now_us``
    over its entities."""
    width = len(plan.names)
    values_out: list[list[Any]] = [[]] * width
    statuses: list[list[str]] = [[]] * width
    times: list[list[Any]] = [[]] * width
    for read_, slots, (tags, w, lt) in zip(plan.reads, plan.slots, spans, strict=True):
        if len(tags) == 1:  # one entity (a model's usual call): no per-entity columns
            known = tags[0] is not None  # a null key was not fetched (as in _per_entity)
            one, stat, at = read_.evaluate_one(blobs[w] if known and w >= 0 else None,
                                               blobs[lt] if known and lt >= 0 else None,
                                               now_us)
            for j, slot in enumerate(slots):  # lists of one built here: two comprehensions
                values_out[slot] = [one[j]]     # cost ~10k instructions more a read
                statuses[slot] = [stat[j]]
                times[slot] = [at]
            continue
        vals, stats, newest = read_.evaluate(_per_entity(blobs, w, tags),
                                             _per_entity(blobs, lt, tags), now_us)
        for j, slot in enumerate(slots):
            values_out[slot] = vals[j]
            statuses[slot] = stats[j]
            times[slot] = list(newest)
    for s in plan.timestamps:  # stored as µs since the epoch
        values_out[s] = [None if v is None else _datetime(v) for v in values_out[s]]
    entities = {k: list(v) for k, v in columns.items()}
    return OnlineResponse(plan.names, plan.dtypes, entities, values_out, statuses, times,
                          plan.key_types)


def _per_entity(blobs: list[bytes | None], start: int,
                tags: list[str | None]) -> list[bytes | None]:
    """The values fetched for one read's keys, one per entity (None where its key is null, or
    for every entity when ``start`` is -1: not fetched)."""
    if start < 0:
        return [None] * len(tags)
    if None not in tags:
        return blobs[start:start + len(tags)]
    it = iter(blobs[start:start + len(tags) - tags.count(None)])
    return [None if t is None else next(it) for t in tags]
