"""The demo's training step: a labelled training set, its manifest, a re-run to the same bytes,
and the online/offline consistency check."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from features.config import RepoConfig

SHOWN = ("user_id", "event_ts", "is_fraud", "user_spend__txn_count_1d",
         "user_spend__spend_eur_7d", "merchant_activity__txn_count_lifetime")
ROWS = 20_000


def run_export(cfg: RepoConfig, console: Console) -> Path:
    """Export ``ROWS`` labelled transactions with the fraud model's features, then check;
    returns the manifest (the training reference of the drift report)."""
    import json
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    import polars as pl
    from rich.table import Table

    from features.errors import TesseraError
    from pipelines.consistency import check_repo
    from tessera.commands import export_training_set, load_valid
    from tessera.demo import drift_from

    console.rule("[bold]10. tessera export: a labelled training set, its manifest, a check")
    work = cfg.resolve(cfg.services.state_dir) / "demo"
    work.mkdir(parents=True, exist_ok=True)
    # Each transaction, with its fraud label, just before it happened: the features a model
    # would have seen when scoring it (the transaction itself is not counted).
    defs = load_valid(cfg)
    source = cfg.resolve(Path(defs.views["user_spend"].source.path))
    events = pl.read_parquet(source / "*" / "*.parquet")
    # The model trains on the weeks before the drift; the drift report compares with them.
    trained_until = datetime.combine(drift_from(), datetime.min.time(), UTC)
    rows = (events.filter(pl.col("event_ts") < trained_until)
            .sample(ROWS, seed=7, shuffle=True)
            .select("user_id", "merchant_id",
                    (pl.col("event_ts") - timedelta(microseconds=1)).alias("event_ts"),
                    "is_fraud"))
    rows.write_parquet(work / "labelled.parquet")
    out = work / "train.parquet"
    summary = export_training_set(cfg, console, out=out, entities=work / "labelled.parquet",
                                  features=None, feature_service="fraud_model_v1",
                                  manifest=None, full_feature_names=True, echo=True)
    train = pl.read_parquet(out)
    table = Table(*(c.replace("user_spend__", "").replace("merchant_activity__", "m.")
                    for c in SHOWN))
    for r in train.head(3).iter_rows(named=True):
        table.add_row(*(r[c].strftime("%m-%d %H:%M:%S") if c == "event_ts"
                        else f"{r[c]:,.2f}" if isinstance(r[c], float) else str(r[c])
                        for c in SHOWN))
    console.print(table)
    manifest = json.loads(summary.manifest.read_text())
    views = ", ".join(f"{name} v{info['manifest_version']} ({info['fingerprint'][:12]})"
                      for name, info in manifest["offline"]["views"].items())
    nulls = {f["column"]: f["nulls"] for f in manifest["features"] if f["nulls"]}
    console.print(f"manifest {summary.manifest.name}: {len(manifest['features'])} features, "
                  f"offline versions read: {views}; {manifest['rows']:,} rows from "
                  f"{manifest['time_range']['first'][:10]} to "
                  f"{manifest['time_range']['last'][:10]}; null values in "
                  f"{len(nulls)} features (empty windows), e.g. "
                  + ", ".join(f"{k.split('__')[1]} {v:,}" for k, v in list(nulls.items())[:3]))
    again = export_training_set(cfg, console, out=work / "again.parquet", entities=None,
                                features=None, feature_service=None, manifest=summary.manifest,
                                echo=True)
    same = again.out.read_bytes() == out.read_bytes()
    console.print(f"same bytes as {out.name}: [{'green' if same else 'red'}]{same}[/]")
    console.print("$ tessera check-consistency --sample 50", markup=False)
    code = check_repo(cfg, console, None, sample=50, seed=7)
    if not same or code != 0:
        raise TesseraError("the demo's export did not reproduce, or online and offline differ")
    return summary.manifest
