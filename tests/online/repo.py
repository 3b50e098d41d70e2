"""A throwaway feature repo on the example definitions, with data ending near now.

Online values are read at request time, so the data must be recent: the events span the
``days`` before today's midnight (UTC). Each repo gets its own project name, so its Redis keys
never meet another test's.
"""

from __future__ import annotations

import shutil
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from features.config import load_config
from features.store import FeatureStore
from pipelines.batch import run
from pipelines.consistency import equal as equal  # DESIGN.md's rule; tests import it here
from pipelines.datagen import GenSpec, write_parquet

REPO_ROOT = Path(__file__).resolve().parents[2]


def today() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def make_repo(folder: Path, redis_url: str, *, rows: int = 20_000, days: int = 10,
              seed: int = 5, cluster: bool = False, definitions: str | None = None,
              end: datetime | None = None) -> Path:
    """Write a repo (config, definitions, generated events) into ``folder``: events of the
    ``days`` before ``end`` (default today's midnight, UTC)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "example").mkdir(exist_ok=True)
    if definitions is None:
        shutil.copy(REPO_ROOT / "example" / "card_features.py", folder / "example")
    else:
        (folder / "example" / "card_features.py").write_text(definitions)
    project = f"t{uuid.uuid4().hex[:10]}"
    (folder / "feature_repo.yaml").write_text(
        f"project: {project}\n"
        f"definitions: [example/card_features.py]\n"
        f"offline: {{path: offline}}\n"
        f"online: {{url: '{redis_url}', cluster: {'true' if cluster else 'false'}}}\n")
    spec = GenSpec(rows=rows, start=(end or today()) - timedelta(days=days), days=days,
                   seed=seed)
    write_parquet(spec, folder / "data", progress=False)
    return folder


def build(folder: Path, redis_url: str, **kwargs) -> FeatureStore:
    """A repo with its views run on Polars (not yet materialized)."""
    make_repo(folder, redis_url, **kwargs)
    cfg = load_config(folder)
    store = FeatureStore(config=cfg)
    run(cfg, list(store.definitions.views.values()), "polars", show_progress=False)
    return store


def historical(store: FeatureStore, view: str, key: str, keys: list[int], at) -> dict:
    feats = [f"{view}:{f.name}" for f in store.definitions.views[view].features]
    rows = pl.DataFrame({key: keys, "event_ts": [at] * len(keys)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # today is not computed offline: read as no events
        return store.get_historical_features(rows, feats,
                                             allow_uncovered=True).to_arrow().to_pydict()


def ids(store: FeatureStore, key: str, n: int = 150) -> list[int]:
    """The busiest and the quietest ``n // 2`` entities of ``key``, and one never seen."""
    data = store.config.resolve(Path("data/transactions"))
    counts = (pl.read_parquet(data, hive_partitioning=False).group_by(key).len()
              .sort(["len", key], descending=[True, False]))
    busiest = counts[key].head(n // 2).to_list()
    rest = counts[key].tail(n // 2).to_list()
    return busiest + rest + [424242424]
