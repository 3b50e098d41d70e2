from __future__ import annotations

from pathlib import Path

import pytest

from features.store import FeatureStore
from features.windows import to_micros
from pipelines.materialize import materialize
from tests.online.repo import build, today


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> FeatureStore:
    """The example repo, run on Polars, ten days of events ending at today's midnight."""
    s = build(Path(tmp_path_factory.mktemp("online")), redis_url)
    yield s
    s.close()


@pytest.fixture(scope="module")
def materialized(store: FeatureStore) -> FeatureStore:
    """Materialized as of today's midnight: reads at any later instant are exact."""
    materialize(store.config, list(store.definitions.views.values()), store.online,
                now_us=to_micros(today()), show_progress=False)
    return store
