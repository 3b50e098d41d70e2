"""Old online state out of Redis: the keys of rules, byte formats or views the repo no longer has.

A rule change gives a view a new fingerprint, and its keys a new name (docs/online.md): reads
never meet the old state. Old window values expire by themselves once their last tile leaves
the longest window, but lifetime values never expire, nor do the stream's per-entity offsets
of lifetime state, so every rule change used to leave them in Redis for good. ``tessera online
gc`` finds them by ``SCAN`` (every master of a cluster) and deletes them:

- a key is **current** when its view, fingerprint and format are those of a view of the repo
  now: kept;
- a key in the online layout whose view, fingerprint or (older) format is not current is **stale**:
  deleted (window ``…:v<N>``, lifetime ``…:L``, stream offsets ``…:O`` and the materialize
  state ``{_materialized}`` key of that fingerprint alike);
- any other key under ``<project>:`` is not ours to judge: counted, left; so is a key of a
  newer byte format than this Tessera's (another deployment, already upgraded, writes it).

It only reads until told to delete (``--delete``), and reports per view and fingerprint what it
found. Run it once no server or stream of the old rules still runs: they would find their
state gone (the repo deployed is the one that decides what is current).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from features.definitions import FeatureView
from features.online.codec import VERSION
from features.online.keys import FINGERPRINT_CHARS, parse
from features.online.redis_store import RedisOnline

Progress = Callable[[int], None]  # keys scanned so far
DELETE_BATCH = 1_000  # keys found before they are deleted, in one round

@dataclass
class StaleState:
    """The keys of one view, fingerprint and format that the repo no longer reads."""

    view: str
    fingerprint: str  # its first FINGERPRINT_CHARS characters, as in the key
    format: int
    why: str  # "rules changed", "view removed", "old format"
    keys: dict[str, int] = field(default_factory=dict)  # per kind: window, lifetime, ...

    @property
    def total(self) -> int:
        return sum(self.keys.values())


@dataclass
class GcSummary:
    scanned: int = 0
    current: int = 0  # keys of the repo's views as they are now: kept
    other: int = 0  # keys under the project's prefix not in the online layout: left alone
    stale: list[StaleState] = field(default_factory=list)
    deleted: int = 0
    seconds: float = 0.0

    @property
    def stale_keys(self) -> int:
        return sum(s.total for s in self.stale)


def collect(project: str, views: dict[str, FeatureView], online: RedisOnline, *,
            delete: bool, progress: Progress | None = None) -> GcSummary:
    """Scan ``project``'s keys; with ``delete``, delete the stale ones (see the module)."""
    began = time.perf_counter()
    current = {(name, v.fingerprint()[:FINGERPRINT_CHARS], VERSION)
               for name, v in views.items()}
    out = GcSummary()
    stale: dict[tuple[str, str, int], StaleState] = {}
    doomed: list[str] = []
    for raw in _scan(online, project):
        out.scanned += 1
        if progress is not None and out.scanned % 10_000 == 0:
            progress(out.scanned)
        try:
            key = raw.decode()
        except UnicodeDecodeError:  # never one of ours: they are built from text
            out.other += 1
            continue
        parsed = parse(project, key)
        if parsed is None:
            out.other += 1
            continue
        view, fp, fmt, kind = parsed
        if (view, fp, fmt) in current:
            out.current += 1
            continue
        if fmt > VERSION:  # a newer Tessera's (a rollout in progress): not ours to judge
            out.other += 1
            continue
        family = stale.get((view, fp, fmt))
        if family is None:
            why = ("view removed" if view not in views else
                   "old format" if fmt != VERSION else "rules changed")
            family = stale[(view, fp, fmt)] = StaleState(view, fp, fmt, why)
        family.keys[kind] = family.keys.get(kind, 0) + 1
        if delete:
            doomed.append(key)
            if len(doomed) >= DELETE_BATCH:
                out.deleted += _delete(online, doomed)
    if doomed:
        out.deleted += _delete(online, doomed)
    if progress is not None:
        progress(out.scanned)
    out.stale = sorted(stale.values(), key=lambda s: (s.view, s.format, s.fingerprint))
    out.seconds = time.perf_counter() - began
    return out


def _scan(online: RedisOnline, project: str) -> Iterator[bytes]:
    """Every key under ``project:`` (each master of a cluster)."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", project) + ":*"
    client = online.client
    kwargs: dict[str, Any] = {"match": pattern, "count": 10_000}
    if online.cluster:
        kwargs["target_nodes"] = client.PRIMARIES
    try:
        yield from client.scan_iter(**kwargs)
    except online._errors as e:
        raise online._unavailable(e) from None


def entity_tags(online: RedisOnline, project: str, view: str, fingerprint: str
                ) -> Iterator[str]:
    """The entity tag of each window and lifetime key of one view and fingerprint in Redis
    (a ``SCAN`` of the project's keys): what materialize deletes of after a full rewrite."""
    want = (view, fingerprint[:FINGERPRINT_CHARS], VERSION)
    head = project + ":{"
    for raw in _scan(online, project):
        key = raw.decode(errors="replace")
        parsed = parse(project, key)
        if parsed is not None and parsed[:3] == want and parsed[3] in ("window", "lifetime"):
            yield key[len(head):key.find("}", len(head))]


def _delete(online: RedisOnline, keys: list[str]) -> int:
    """``DEL`` the keys (each cluster key to its master); how many there were. Empties
    ``keys``."""
    n = online.delete(keys)
    keys.clear()
    return n


def estimate(online: RedisOnline) -> int:
    """Keys in the store (every master): what a scan walks at most."""
    client = online.client
    if online.cluster:
        sizes = client.dbsize(target_nodes=client.PRIMARIES)
        return int(sum(sizes.values()) if isinstance(sizes, dict) else sizes)
    return int(client.dbsize())


__all__ = ["GcSummary", "StaleState", "collect", "estimate"]
