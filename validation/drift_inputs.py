"""The two sides of a drift report: a training manifest, a window of point-in-time values, or the
serving log; and which features they compare.

- ``--reference train.manifest.json``: the training set an export wrote, its feature columns
  read from the Parquet file the manifest names. A feature whose fingerprint changed since the
  export means something else now: it is left out, with a line saying so.
- ``START..END`` (ISO dates or instants, UTC; END exclusive): events of the views' source with
  ``START <= event time < END`` are sampled uniformly (seeded), and the features are read at
  each sampled (entity, instant) by the point-in-time read
  (:meth:`features.store.FeatureStore.get_historical_features`), as a training export would.
- ``serving-log``: the sampled log of online responses, Parquet under
  ``serving_log.path/date=YYYY-MM-DD/``, one column ``view__feature`` per feature, ``served_at``
  (UTC) bounded by ``--since`` / ``--until``.

Every unusable input raises :class:`validation.drift.DriftInputError` with one line naming it
and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.definitions import FeatureView
from features.names import did_you_mean
from features.windows import parse_instant, to_micros
from validation.drift import DriftInputError, FeatureColumn, Side, kind_of, sample_indices

if TYPE_CHECKING:
    from features.config import RepoConfig
    from features.store import FeatureStore

SERVING_LOG = "serving-log"


@dataclass(frozen=True)
class TimeWindow:
    """``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    @property
    def text(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


def _utc(value: str, option: str) -> datetime:
    try:
        t = parse_instant(value)
    except ValueError as e:
        raise DriftInputError(f"{option}: {e}") from None
    assert t is not None  # value is a str
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_window(text: str, option: str) -> TimeWindow:
    """``START..END`` → a window; refuses a malformed or empty one."""
    if text.count("..") != 1:
        raise DriftInputError(f"{option} {text!r}: expected a window START..END of ISO dates or "
                              f"instants (UTC, END exclusive), e.g. 2026-01-01..2026-01-08")
    a, b = (part.strip() for part in text.split(".."))
    window = TimeWindow(_utc(a, option), _utc(b, option))
    if window.end <= window.start:
        raise DriftInputError(f"{option} {text!r}: the window is empty (END must be after START)")
    return window


def selected_refs(store: FeatureStore, view: str | None, service: str | None) -> list[str] | None:
    """``view:feature`` refs of ``--view`` or ``--service`` (None when neither is given)."""
    defs = store.definitions
    if view is not None and service is not None:
        raise DriftInputError("give --view or --service, not both")
    if view is not None:
        if view not in defs.views:
            raise DriftInputError(f"--view {view!r}: no such feature view{did_you_mean(view, defs.views)}"
                                  f" (defined: {', '.join(sorted(defs.views)) or 'none'})")
        return [f"{view}:{f.name}" for f in defs.views[view].features]
    if service is not None:
        if service not in defs.services:
            raise DriftInputError(f"--service {service!r}: no such feature service"
                                  f"{did_you_mean(service, defs.services)} (defined: "
                                  f"{', '.join(sorted(defs.services)) or 'none'})")
        return list(defs.services[service].features)
    return None


def columns_of(store: FeatureStore, refs: Sequence[str],
               excluded: dict[str, str]) -> list[FeatureColumn]:
    """The compared features with their kinds declared by the definitions; the others go to
    ``excluded`` with the reason."""
    out = []
    for ref in refs:
        view_name, name = ref.split(":")
        view = store.definitions.views[view_name]
        dtype = view.output_dtype(view.feature(name))
        kind = kind_of(dtype)
        if kind is None:
            excluded[ref] = f"values of type {dtype} are not compared"
        else:
            out.append(FeatureColumn(ref, dtype, kind))
    return out


@dataclass
class ManifestReference:
    """An export manifest as a reference: its features, and those that changed meaning."""

    path: Path
    doc: dict[str, Any]
    refs: list[str]  # still meaning what they meant at export, in manifest order
    changed: dict[str, str]  # ref -> why it is left out

    @classmethod
    def load(cls, store: FeatureStore, path: Path) -> ManifestReference:
        from pipelines.export import ExportError, load_manifest

        try:
            doc = load_manifest(path)
        except ExportError as e:
            raise DriftInputError(str(e).replace("--manifest", "--reference", 1)) from None
        views = store.definitions.views
        refs, changed = [], {}
        for f in doc["features"]:
            view = views.get(f["view"])
            if view is None:
                raise DriftInputError(
                    f"--reference {str(path)!r}: its feature view {f['view']!r} is no longer "
                    f"defined{did_you_mean(f['view'], views)}; expected a manifest of the current "
                    f"definitions (export a new training set)")
            name = f["ref"].split(":")[1]
            if name not in {x.name for x in view.features}:
                changed[f["ref"]] = "no longer defined"
                continue
            now = view.feature_fingerprint(view.feature(name))
            if now != f["fingerprint"]:
                changed[f["ref"]] = (f"changed meaning since the export (fingerprint "
                                     f"{f['fingerprint'][:12]} then, {now[:12]} now)")
                continue
            refs.append(f["ref"])
        return cls(Path(path), doc, refs, changed)

    def side(self, columns: Sequence[FeatureColumn]) -> Side:
        import pyarrow.parquet as pq

        out = Path(self.doc["output"]["path"])
        if not out.is_file():
            raise DriftInputError(f"--reference {str(self.path)!r}: its training set "
                                  f"{str(out)!r} is gone (expected the Parquet file the export "
                                  f"wrote)")
        by_ref = {f["ref"]: f["column"] for f in self.doc["features"]}
        wanted = [by_ref[c.ref] for c in columns]
        table = pq.read_table(out, columns=wanted).rename_columns([c.ref for c in columns])
        return Side(f"training set {out.name}", table, table.num_rows,
                    {"manifest": str(self.path), "path": str(out),
                     "sha256": self.doc["output"]["sha256"],
                     "time_range": self.doc.get("time_range")})


def _connect() -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = true")  # a seeded sample picks the same rows
    con.execute("SET enable_progress_bar = false")
    return con


def _sql_list(paths: Sequence[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def window_side(cfg: RepoConfig, store: FeatureStore, columns: Sequence[FeatureColumn],
                window: TimeWindow, option: str, *, sample_rows: int, seed: int) -> Side:
    """Features at sampled (entity, instant) pairs of the source events in ``window``, each
    read 1 µs before its event (what was served when it was scored)."""
    from features.sql import quote
    from pipelines.sources import landing_root, source_files

    views: list[FeatureView] = list({c.ref.split(":")[0]: store.definitions.views[
        c.ref.split(":")[0]] for c in columns}.values())
    sources = {v.source.name for v in views}
    if len(sources) > 1:
        raise DriftInputError(f"{option}: the features read {len(sources)} sources "
                              f"({', '.join(sorted(sources))}); a window samples the events of "
                              f"one source: compare one --view at a time")
    source = views[0].source
    files = source_files(source, cfg.root, landing_root(cfg.resolve(cfg.offline.path), source))
    keys = list(dict.fromkeys(k for v in views for k in v.join_keys))
    ts = source.timestamp_field
    con = _connect()
    lo, hi = to_micros(window.start), to_micros(window.end)
    if not files:
        raise DriftInputError(f"{option} {window.text}: source {source.name!r} has no Parquet "
                              f"files under {str(cfg.resolve(Path(source.path)))!r}")
    not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in keys)
    # Each event is read just before it happened (t - 1 µs): the values a model scoring that
    # event saw, the convention of a training set exported for the same events.
    events = con.sql(
        f"SELECT {', '.join(quote(k) for k in keys)}, "
        f"{quote(ts)} - INTERVAL 1 MICROSECOND AS {quote(ts)} FROM read_parquet("
        f"{_sql_list(files)}, union_by_name=true, hive_partitioning=false) "
        f"WHERE epoch_us({quote(ts)}) >= {lo} AND epoch_us({quote(ts)}) < {hi} AND {not_null}"
    ).to_arrow_table()
    if events.num_rows == 0:
        span = con.sql(f"SELECT min({quote(ts)}), max({quote(ts)}) FROM read_parquet("
                       f"{_sql_list(files)}, union_by_name=true, hive_partitioning=false)"
                       ).fetchall()[0]
        have = ("it has none" if span[0] is None
                else f"its events span {span[0].isoformat()} .. {span[1].isoformat()}")
        raise DriftInputError(f"{option} {window.text}: no events of source {source.name!r} in "
                              f"this window ({have})")
    picked = events.take(sample_indices(events.num_rows, sample_rows, seed))
    job = store.get_historical_features(picked, [c.ref for c in columns],
                                        full_feature_names=True, timestamp_field=ts)
    table = job.to_arrow()
    table = table.select([c.ref.replace(":", "__") for c in columns]).rename_columns(
        [c.ref for c in columns])
    return Side(f"window {window.text}", table, events.num_rows,
                {"window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
                 "source": source.name, "events": events.num_rows})


def serving_log_side(cfg: RepoConfig, columns: Sequence[FeatureColumn],
                     excluded: dict[str, str], *, since: str | None,
                     until: str | None) -> tuple[Side, list[FeatureColumn]]:
    """The sampled online responses served in ``[since, until)``; features the log lacks go to
    ``excluded``."""
    root = cfg.resolve(cfg.serving_log.path)
    lo = None if since is None else _utc(since, "--since")
    hi = None if until is None else _utc(until, "--until")
    if lo is not None and hi is not None and hi <= lo:
        raise DriftInputError(f"--since {since!r} --until {until!r}: the window is empty "
                              f"(--until must be after --since)")
    files = sorted(p for p in root.glob("date=*/*.parquet")
                   if not p.name.startswith((".", "_"))
                   and _day_in(p.parent.name[5:], lo, hi))
    where = "the serving log" + (f" from {lo.isoformat()}" if lo else "") + (
        f" until {hi.isoformat()}" if hi else "")
    if not files:
        raise DriftInputError(f"--current serving-log: no files of {where} under {str(root)!r} "
                              f"(expected date=YYYY-MM-DD/*.parquet written by the feature "
                              f"server with serving_log.enabled)")
    con = _connect()
    source = (f"read_parquet({_sql_list(files)}, union_by_name=true, "
              f"hive_partitioning=false)")
    have = {r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    if "served_at" not in have:
        raise DriftInputError(f"--current serving-log: files under {str(root)!r} have no "
                              f"served_at column (expected the serving log's schema)")
    kept = []
    for c in columns:
        if c.ref.replace(":", "__") in have:
            kept.append(c)
        else:
            excluded[c.ref] = "not in the serving log"
    if not kept:
        raise DriftInputError(f"--current serving-log: none of the features is in {where} "
                              f"(expected columns like {columns[0].ref.replace(':', '__')!r})")
    from features.sql import quote

    conds = [f"served_at >= '{lo.isoformat()}'::TIMESTAMPTZ" if lo else "",
             f"served_at < '{hi.isoformat()}'::TIMESTAMPTZ" if hi else ""]
    cond = " AND ".join(c for c in conds if c) or "true"
    names = [c.ref.replace(":", "__") for c in kept]
    table = con.sql(f"SELECT {', '.join(quote(n) for n in names)} FROM {source} WHERE {cond}"
                    ).to_arrow_table()
    if table.num_rows == 0:
        raise DriftInputError(f"--current serving-log: no responses logged in {where} "
                              f"(expected rows with served_at in that range)")
    table = table.rename_columns([c.ref for c in kept])  # sampled by compare()
    return Side(f"serving log {where[len('the serving log'):].strip() or '(all)'}", table,
                table.num_rows,
                {"path": str(root), "files": len(files),
                 "since": None if lo is None else lo.isoformat(),
                 "until": None if hi is None else hi.isoformat()}), kept


def _day_in(day: str, lo: datetime | None, hi: datetime | None) -> bool:
    """Whether a ``date=`` folder can hold responses served in ``[lo, hi)``."""
    if lo is not None and day < lo.date().isoformat():
        return False
    return not (hi is not None and day > hi.date().isoformat())
