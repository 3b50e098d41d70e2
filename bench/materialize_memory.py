"""Peak memory and time of one full materialization, from the batch run's snapshot and from the
tiles, and of the batch run's snapshot build, against the bytes of the values written.

The tiles and the snapshot build run twice: in ranges of entities (``pipelines.online_parts``,
the default) and in one part (``TESSERA_BUILD_ROWS`` above the view's rows: the build before
ranges), the baseline in the same run. Each measure runs in its own process: the store is
opened and the libraries imported first, then the peak RSS is reset (``bench/peak_memory.py``),
so the peak above that point is what the materialization or build itself held. The values are
written to a database of their own (``--db``, emptied before each run) of the Redis
``bench/online.py`` uses, from the repo it made (``.tessera/bench/online/repo``: run it first). The baseline is the size of the values themselves: the snapshot file's blob column,
uncompressed.

    .venv/bin/python bench/materialize_memory.py [--rounds 3] [--db 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import peak_memory  # noqa: E402
from bench.online import WORK  # noqa: E402  (the repo it measures)
from bench.peak_memory import ONE_PART  # noqa: E402

REPO = WORK / "repo"


MEASURES = ("snapshot", "tiles", "tiles, one part", "snapshot build",
            "snapshot build, one part")


def one(measure: str, db: int) -> dict[str, Any]:
    """One full materialization into an emptied ``db``, or one snapshot build (run in a child
    process)."""
    import numpy  # noqa: F401  (imported before the baseline, as materialize imports them)
    import pyarrow.compute
    import pyarrow.parquet  # noqa: F401

    from features import offline_store
    from features.config import load_config
    from features.store import FeatureStore
    from pipelines import online_build, online_snapshot  # noqa: F401
    from pipelines.materialize import materialize

    cfg = load_config(REPO)
    url = cfg.online.url.rsplit("/", 1)[0] + f"/{db}"
    source = "snapshot" if measure == "snapshot" else "tiles"
    cfg = cfg.model_copy(update={
        "online": cfg.online.model_copy(update={"url": url}),
        "offline": cfg.offline.model_copy(update={"online_snapshot": source == "snapshot"})})
    store = FeatureStore(config=cfg)
    store.online.client.flushdb()
    view = store.definitions.views["user_spend"]
    if measure.startswith("snapshot build"):
        root = cfg.resolve(cfg.offline.path)
        manifest = offline_store.latest(root, view.name, view.fingerprint())
        assert manifest is not None, "run bench/online.py first"
        base = peak_memory.start()
        began = time.perf_counter()
        built = online_snapshot.write(root, view, manifest)
        seconds = time.perf_counter() - began
        peak = peak_memory.peak_mb()
        store.close()
        return {"measure": measure, "entities": built.entities, "seconds": seconds,
                "base_mb": base, "peak_mb": peak, "held_mb": peak - base}
    base = peak_memory.start()
    began = time.perf_counter()
    [summary] = materialize(cfg, [view], store.online, show_progress=False)
    seconds = time.perf_counter() - began
    peak = peak_memory.peak_mb()
    if summary.source != source:
        raise SystemExit(f"wanted a materialization from the {source}, got {summary.source} "
                         f"({summary.note}): run bench/online.py first")
    keys = store.online.client.dbsize()
    store.online.client.flushdb()
    store.close()
    return {"measure": measure, "entities": summary.entities, "keys": keys,
            "seconds": seconds, "base_mb": base, "peak_mb": peak, "held_mb": peak - base}


def value_bytes() -> tuple[int, int, int]:
    """(bytes of every blob, rows, row groups) of the view's current snapshot."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted((REPO / "offline" / "user_spend").glob("*/_online/*.parquet"))
    if not files:
        raise SystemExit(f"no snapshot under {REPO}: run bench/online.py first")
    parquet = pq.ParquetFile(files[-1])
    blobs = parquet.read(columns=["blob"]).column("blob")
    return (int(pc.sum(pc.binary_length(blobs)).as_py()), parquet.metadata.num_rows,
            parquet.metadata.num_row_groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.db)))
        return
    from rich.console import Console
    from rich.table import Table

    size, rows, groups = value_bytes()
    got: dict[str, list[dict[str, Any]]] = {m: [] for m in MEASURES}
    for _ in range(args.rounds):  # interleaved: the machine is shared
        for measure in got:
            env = dict(os.environ)
            if measure.endswith("one part"):
                env["TESSERA_BUILD_ROWS"] = ONE_PART
            out = subprocess.run([sys.executable, __file__, "--one", measure, "--db",
                                  str(args.db)], capture_output=True, text=True, check=True,
                                 timeout=600, env=env)
            got[measure].append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = Table(title=f"materialize or build user_spend in full: {rows:,} values, "
                        f"{size / 2**20:,.1f} MiB of blobs, snapshot in {groups} row groups")
    for col in ("measure", "entities", "median s", "held MiB (runs)", "held / value bytes"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for measure, runs in got.items():
        held = [r["held_mb"] for r in runs]
        table.add_row(measure, f"{runs[0]['entities']:,}",
                      f"{statistics.median(r['seconds'] for r in runs):.2f}",
                      f"{statistics.median(held):,.0f} ({', '.join(f'{h:.0f}' for h in held)})",
                      f"{statistics.median(held) * 2**20 / size:.2f}×")
    Console().print(table)


if __name__ == "__main__":
    main()
