"""Fixtures of the streaming tests."""

from __future__ import annotations

from typing import Any

import pytest

from features.repo import load_definitions
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def example() -> Any:
    """The example repo's definitions (the card transactions source and its views)."""
    from features.config import load_config

    cfg = load_config(REPO_ROOT / "feature_repo.yaml")
    return cfg, load_definitions(cfg)
