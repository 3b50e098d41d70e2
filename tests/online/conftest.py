from __future__ import annotations

from pathlib import Path

import pytest

from features.store import FeatureStore
from tests.online.repo import build


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> FeatureStore:
    """The example repo, run on Polars, ten days of events ending at today's midnight."""
    s = build(Path(tmp_path_factory.mktemp("online")), redis_url)
    yield s
    s.close()
