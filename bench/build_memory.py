"""Peak memory and time of building a view's online values from its tiles, in ranges of
entities (``pipelines.online_parts``, the default) against one part (the build before ranges,
the baseline in the same run), on views of growing size: in ranges, memory should stay about
flat as the view grows; in one part it grows with the view.

For each ``--rows`` it generates the example events (``rows / 40`` users over 30 days), runs
``user_spend`` on Polars into a repo under ``.tessera/bench/build_memory/`` (kept between runs),
then builds its online values as of now, each build in its own process: the libraries are
imported and DuckDB started, the process's peak RSS reset (``bench/peak_memory.py``), and the
peak above that point is what the build held.

    .venv/bin/python bench/build_memory.py [--rows 2000000 8000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import peak_memory  # noqa: E402
from bench.peak_memory import ONE_PART  # noqa: E402

WORK = ROOT / ".tessera" / "bench" / "build_memory"
DAYS = 30


def repo(rows: int) -> Path:
    """A repo of ``rows`` example events ending at today's midnight, run (made once)."""
    from features.config import load_config
    from features.store import FeatureStore
    from pipelines.batch import run
    from pipelines.datagen import GenSpec, write_parquet

    folder = WORK / f"rows{rows}"
    if (folder / "done").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "example").mkdir(parents=True)
    shutil.copy(ROOT / "example" / "card_features.py", folder / "example")
    (folder / "feature_repo.yaml").write_text(
        "project: build_memory\ndefinitions: [example/card_features.py]\n"
        "offline: {path: offline, online_snapshot: false}\n")
    now = datetime.now(UTC)
    end = datetime(now.year, now.month, now.day, tzinfo=UTC)
    write_parquet(GenSpec(rows=rows, start=end - timedelta(days=DAYS), days=DAYS, seed=7),
                  folder / "data", progress=False)
    cfg = load_config(folder)
    store = FeatureStore(config=cfg)
    run(cfg, [store.definitions.views["user_spend"]], "polars", show_progress=False)
    (folder / "done").write_text("")
    return folder


def one(folder: Path) -> dict[str, Any]:
    """Build user_spend's online values as of now (in a child process)."""
    import duckdb
    import numpy  # noqa: F401
    import pyarrow.compute  # noqa: F401

    from features import offline_store
    from features.config import load_config
    from features.online.codec import codec
    from features.store import FeatureStore
    from pipelines import online_parts

    cfg = load_config(folder)
    view = FeatureStore(config=cfg).definitions.views["user_spend"]
    root = cfg.resolve(cfg.offline.path)
    manifest = offline_store.latest(root, view.name, view.fingerprint())
    assert manifest is not None
    base = offline_store.view_dir(root, view.name, view.fingerprint())
    duckdb.connect().sql("SELECT 1").fetchall()
    before = peak_memory.start()
    began = time.perf_counter()
    parts = online_parts.built(view, base, manifest, None, codec(view), time.time_ns() // 1000)
    count = value_bytes = entities = 0
    for values in parts:
        count += 1
        entities += len(values.window_tags)
        value_bytes += values.window_blobs.nbytes if values.window_blobs is not None else 0
    return {"parts": count, "entities": entities, "value_mb": value_bytes / 2**20,
            "seconds": time.perf_counter() - began,
            "held_mb": peak_memory.peak_mb() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 8_000_000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one))))
        return
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    got: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("repos and builds", total=len(args.rows) * (1 + 2 * args.rounds))
        folders = {}
        for rows in args.rows:
            folders[rows] = repo(rows)
            bar.advance(task)
        for _ in range(args.rounds):  # interleaved: the machine is shared
            for rows in args.rows:
                for how in ("ranges", "one part"):
                    env = dict(os.environ)
                    if how == "one part":
                        env["TESSERA_BUILD_ROWS"] = ONE_PART
                    out = subprocess.run([sys.executable, __file__, "--one", str(folders[rows])],
                                         capture_output=True, text=True, check=True,
                                         timeout=900, env=env)
                    got.setdefault((rows, how), []).append(
                        json.loads(out.stdout.strip().splitlines()[-1]))
                    bar.advance(task)
    table = Table(title="building user_spend's online values from the tiles (medians)")
    for col in ("events", "build", "parts", "entities", "values MiB", "median s",
                "held MiB (runs)", "held / values", "s: ranges / one part"):
        table.add_column(col, justify="left" if col == "build" else "right")
    for (rows, how), runs in got.items():
        held = [r["held_mb"] for r in runs]
        seconds = statistics.median(r["seconds"] for r in runs)
        base = statistics.median(r["seconds"] for r in got[rows, "one part"])
        table.add_row(f"{rows:,}", how, str(runs[0]["parts"]), f"{runs[0]['entities']:,}",
                      f"{runs[0]['value_mb']:.1f}", f"{seconds:.2f}",
                      f"{statistics.median(held):,.0f} ({', '.join(f'{h:.0f}' for h in held)})",
                      f"{statistics.median(held) / runs[0]['value_mb']:.2f}×",
                      f"{seconds / base:.2f}×" if how == "ranges" else "")
    Console().print(table)


if __name__ == "__main__":
    main()
