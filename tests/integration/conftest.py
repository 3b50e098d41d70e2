"""Fixtures of the ``tessera serve`` tests: the repo, built and materialized once for the
package (test_server.py and test_server_faults.py share it), a store on it and its users."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from features.store import FeatureStore
from tests.conftest import delete_project_keys
from tests.integration.serve_harness import write_repo


@pytest.fixture(scope="package")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    """The repo file: ten days of transactions up to today, materialized into Redis."""
    from pipelines.batch import run
    from pipelines.datagen import generate_cli

    root = tmp_path_factory.mktemp("serve")
    path = write_repo(root / "repo", redis_url, root / "offline")
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    generate_cli(rows=20_000, out=root / "repo" / "data", start=start - timedelta(days=10),
                 days=10, seed=5, progress=False)
    store = FeatureStore(path)
    try:
        run(store.config, list(store.definitions.views.values()), "polars", show_progress=False)
        store.materialize()
        yield path
    finally:
        delete_project_keys(store)
        store.close()


@pytest.fixture(scope="module")
def store(repo: Path) -> Iterator[FeatureStore]:
    s = FeatureStore(repo)
    yield s
    s.close()


@pytest.fixture(scope="module")
def users(store: FeatureStore) -> list[int]:
    """The busiest users (with values in every window) and one never seen."""
    import polars as pl

    events = pl.read_parquet(store.config.root / "data" / "transactions" / "**" / "*.parquet")
    busiest = events["user_id"].value_counts().sort("count", descending=True)["user_id"]
    return [*busiest.head(4).to_list(), 424242]
