"""``tessera serve`` of two commits side by side: did a change make the server slower?

Both servers run at once on the same repo and Redis: this checkout's, and one from a git
worktree of ``--base`` (removed afterwards). Rounds of sequential requests alternate between
them (``bench/http_client.py``'s load loop and raw client, the online benchmark's), first one
then the other, so a noisy minute of the shared machine lands on both. Each side runs its own
compiled read path: the worktree's modules are built by its own ``tessera compile`` into a
folder of its own (``TESSERA_COMPILED_DIR``), since a build in the shared folder would remove
this checkout's builds of the modules that differ.

Run after ``bench/online.py`` has built its repo (or give ``--repo``)::

    .venv/bin/python bench/serve_versions.py --base d174155 --rounds 6 --iterations 3000
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too

from bench.http_client import http_latency, repo_sample
from bench.servers import TesseraServer

ROOT = Path(__file__).resolve().parents[1]
BENCH_REPO = ROOT / ".tessera" / "bench" / "online" / "repo"


class ServerAt(TesseraServer):
    """``tessera serve`` with its code imported from ``source`` (a worktree) first."""

    def __init__(self, repo: Path, source: Path, compiled: Path) -> None:
        super().__init__(repo, env=source_env(source, compiled))
        self.source = source

    def spawn_options(self) -> dict[str, Any]:
        return {"cwd": self.source, "env": self.env}


def source_env(source: Path, compiled: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(source), "TESSERA_COMPILED_DIR": str(compiled)}


def build(source: Path, compiled: Path) -> None:
    """``tessera compile`` of the worktree into its own folder; prints how each module imports."""
    env = source_env(source, compiled)
    cmd = [sys.executable, "-m", "tessera.cli", "compile"]
    subprocess.run(cmd, cwd=source, env=env, check=True, capture_output=True)
    check = subprocess.run([*cmd, "--check"], cwd=source, env=env, check=True,
                           capture_output=True, text=True).stdout
    compiled = len(re.findall(r"│ compiled\s+│", check))  # the status column, not the prose
    print(f"base's read path: {compiled} modules compiled")


def compare(repo: Path, base: str, rounds: int, iterations: int,
            max_seconds: float) -> dict[str, list[dict[str, Any]]]:
    """Per server label, one result per round (``http_latency``'s dicts)."""
    refs, key, ids = repo_sample(repo, None, 10)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="tessera-serve-base-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                        base], check=True)
        try:
            build(tree, Path(tmp) / "compiled")
            labels = (f"{base} (base)", f"{head} (this checkout)")
            results: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
            with ServerAt(repo, tree, Path(tmp) / "compiled") as old, TesseraServer(repo) as new:
                servers = dict(zip(labels, (old, new), strict=True))
                for s in servers.values():  # warm both: imports, caches, connections
                    http_latency(s.url, refs, key, ids, iterations=500, client="raw")
                for r in range(rounds):
                    order = list(servers.items())
                    for label, s in order if r % 2 == 0 else order[::-1]:
                        x = http_latency(s.url, refs, key, ids, iterations=iterations,
                                         max_seconds=max_seconds, client="raw", seed=r)
                        results[label].append(x)
                        print(f"round {r}  {label:28s} p50 {x['p50_ms']:.3f}  "
                              f"p99 {x['p99_ms']:.3f} ms", flush=True)
            return results
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--repo", type=Path, default=BENCH_REPO)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=3000, help="requests per round")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="bound of each round")
    args = parser.parse_args()
    if not (args.repo / "feature_repo.yaml").exists() and not args.repo.is_file():
        raise SystemExit(f"{args.repo}: no feature_repo.yaml (run bench/online.py first, or "
                         f"give --repo)")
    results = compare(args.repo, args.base, args.rounds, args.iterations, args.max_seconds)
    print(f"\n{'server':30s} {'p50 per round':>15s} {'p99 per round':>15s} {'median p50/p99':>16s}")
    medians = {}
    for label, rs in results.items():
        p50 = [r["p50_ms"] for r in rs]
        p99 = [r["p99_ms"] for r in rs]
        medians[label] = (statistics.median(p50), statistics.median(p99))
        print(f"{label:30s} {min(p50):6.3f}-{max(p50):6.3f}  {min(p99):6.3f}-{max(p99):6.3f}  "
              f"{medians[label][0]:7.3f} / {medians[label][1]:.3f}")
    (b50, b99), (h50, h99) = medians.values()
    print(f"this checkout / base, median p50 {h50 / b50:.2f}×, median p99 {h99 / b99:.2f}× "
          f"(< 1: faster)")


if __name__ == "__main__":
    main()
