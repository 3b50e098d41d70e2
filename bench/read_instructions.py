"""Instructions per online read, counted by callgrind: the Python work of a read, free of the
machine's noise.

On this shared 2-vCPU VM a 100-entity read's p50 moves by 30% from one minute to the next, so a
change of a few percent in the read's own cost cannot be timed. Callgrind counts the
instructions the process executes, which does not depend on the neighbours. The read's Redis
reply is recorded once and replayed from memory (``RedisOnline.get`` replaced), so what is
counted is everything of ``get_online_features(...).to_dict()`` but the network: key building,
evaluation, statuses, the response. Each size runs twice under valgrind, with N calls and with
none, and the difference over N is the cost of one call (imports cancel out;
``PYTHONHASHSEED=0`` keeps both runs alike).

Uses the repo ``bench/online.py`` made (``.tessera/bench/online/repo``, materialized). Needs
``valgrind`` (``apt-get install valgrind``); about a minute per run.

    .venv/bin/python bench/read_instructions.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.online import FEATURES, WORK  # noqa: E402  (the repo and features it measures)

REPO = WORK / "repo"

REPLY = ROOT / ".tessera" / "bench" / "read_instructions" / "reply.pkl"
REFS = [f"user_spend:{f}" for f in FEATURES]
NOW_US = 1_796_000_000_000_000  # fixed: the same windows in every run


def record(entities: int = 100) -> None:
    """Fetch the window values of ``entities`` random users once, for the replays."""
    from features.store import FeatureStore

    store = FeatureStore(repo_path=REPO)
    head, tail, _ = store.plan(REFS).key_parts[0]
    rnd = random.Random(5)
    keys = [head + str(rnd.randrange(1_000_000, 1_049_000)) + tail for _ in range(entities)]
    reply = store.online.get(keys)
    if sum(v is None for v in reply) > entities // 2:
        raise SystemExit(f"most of {keys[0]}... are missing: run bench/online.py first")
    REPLY.parent.mkdir(parents=True, exist_ok=True)
    REPLY.write_bytes(pickle.dumps(reply))
    store.close()


def replay(batch: int, calls: int) -> None:
    """``calls`` reads of ``batch`` entities, Redis's reply replayed from memory."""
    from features.store import FeatureStore

    store = FeatureStore(repo_path=REPO)
    store.serving_log = None
    reply = pickle.loads(REPLY.read_bytes())
    store.online.get = lambda keys: reply[:len(keys)]  # type: ignore[method-assign]

    def pipelined(key_lists: Any) -> Any:  # a large read's parts, replayed in turn
        at = 0
        for keys in key_lists:
            yield reply[at:at + len(keys)]
            at += len(keys)

    store.online.get_pipelined = pipelined  # type: ignore[method-assign]
    rows = [{"user_id": 1_000_000 + i} for i in range(batch)]
    store.get_online_features(REFS, rows, now=NOW_US)  # plans the request (not counted)
    for _ in range(calls):
        store.get_online_features(REFS, rows, now=NOW_US).to_dict()


def count(batch: int, calls: int) -> int:
    """Instructions of a whole replay process (callgrind's ``I refs``)."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--replay", str(batch), str(calls)],
        env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True,
        timeout=900)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="1-entity calls (100: a tenth)")
    parser.add_argument("--replay", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        replay(*args.replay)
        return
    record()
    for batch, calls in ((1, args.calls), (100, max(1, args.calls // 10))):
        per_call = (count(batch, calls) - count(batch, 0)) / calls
        print(f"{batch:>3} entities x 10 features: {per_call:,.0f} instructions per call "
              f"({per_call / batch:,.0f} per entity; {calls} calls)", flush=True)


if __name__ == "__main__":
    main()
