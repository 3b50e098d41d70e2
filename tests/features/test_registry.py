"""`tessera apply` writes a Feast registry that Feast's own tooling lists and browses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from features.config import load_config
from features.registry import apply
from tests.conftest import REPO_ROOT


def test_feast_lists_what_apply_registered(tmp_path: Path) -> None:
    from features.repo import load_definitions
    from features.validate import validate

    cfg = load_config(REPO_ROOT / "feature_repo.yaml", environ={
        "TESSERA__REGISTRY__PATH": str(tmp_path / "registry.db"),
        "TESSERA__SERVICES__STATE_DIR": str(tmp_path / "state"),
    })
    defs = load_definitions(cfg)
    validate(defs)
    summary = apply(cfg, defs)
    assert summary.registry == tmp_path / "registry.db" and summary.registry.exists()

    feast_bin = Path(sys.executable).with_name("feast")
    out = subprocess.run([str(feast_bin), "-c", str(summary.feast_repo), "feature-views", "list"],
                         capture_output=True, text=True, check=True).stdout
    assert "user_spend" in out and "merchant_activity" in out

    import feast

    store = feast.FeatureStore(repo_path=str(summary.feast_repo))
    [service] = store.list_feature_services()
    assert service.name == "fraud_model_v1"
    assert {p.name for p in service.feature_view_projections} == {"user_spend",
                                                                  "merchant_activity"}
    fv = store.get_feature_view("user_spend")
    view = defs.views["user_spend"]
    assert fv.tags["tessera.fingerprint"] == view.fingerprint()
    assert json.loads(fv.tags["tessera.rules"]) == json.loads(
        json.dumps(view.rules_dict(), sort_keys=True))
    assert {f.name for f in fv.schema} >= {"txn_count_1h", "spend_eur_7d", "last_country"}
    field = next(f for f in fv.schema if f.name == "spend_eur_7d")
    assert field.tags["tessera.fingerprint"] == view.feature_fingerprint(view.feature("spend_eur_7d"))
    assert field.tags["tessera.window"] == "7d/168m"
    # The source's expectations are registered with it, as data another tool can read.
    checks = json.loads(store.get_data_source("transactions").tags["tessera.expectations"])
    assert {"kind": "between", "column": "amount", "min": 0, "max": 1_000_000,
            "strict_min": True, "severity": "error"} in checks
    assert len(checks) == len(view.source.expectations)

    # Applying again is idempotent, and a view removed from the repo leaves the registry.
    del defs.views["merchant_activity"]
    defs.services.clear()
    apply(cfg, defs)
    names = {v.name for v in feast.FeatureStore(repo_path=str(summary.feast_repo))
             .list_feature_views()}
    assert names == {"user_spend"}
