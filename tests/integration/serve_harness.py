"""The harness of the ``tessera serve`` tests: a repo (the card example plus a view keyed by a
string) under a project name of its own, the features its tests read, the check of a one-line
error, and ``tessera serve`` run as the CLI runs it, in a
subprocess on a free port, always stopped on exit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO_ROOT
from tests.online.private_redis import free_port

PROJECT = f"httptest{os.getpid()}"  # keys of its own: parallel runs never share them
MAX_ENTITIES = 50
MAX_BODY = 8192
USER_FEATURES = ["user_spend:txn_count_1h", "user_spend:txn_count_1d", "user_spend:txn_count_7d",
                 "user_spend:spend_eur_1d", "user_spend:spend_eur_7d",
                 "user_spend:spend_eur_mean_7d", "user_spend:spend_eur_max_7d",
                 "user_spend:spend_eur_std_7d", "user_spend:last_country",
                 "user_spend:last_channel"]

COUNTRY_VIEW = '''
from features import Entity, FeatureView, Source, agg, col

country = Entity(name="country", join_key="country", dtype="string")
by_country = Source(
    name="transactions_by_country", path="data/transactions", timestamp_field="event_ts",
    schema={"transaction_id": "int64", "user_id": "int64", "merchant_id": "int64",
            "amount": "float64", "currency": "string", "country": "string",
            "channel": "string", "card_present": "bool", "mcc": "string", "is_fraud": "bool",
            "event_ts": "timestamp"})
country_activity = FeatureView(
    name="country_activity", entities=[country], source=by_country, ttl="30d",
    features=[agg.count(windows=["1d"], name="txn_count"),
              agg.last(col("channel"), name="last_channel"),
              agg.last(col("event_ts"), name="last_seen")])
'''


def write_repo(folder: Path, redis_url: str, offline: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "example" / "card_features.py", folder / "card_features.py")
    (folder / "country_features.py").write_text(COUNTRY_VIEW)
    (folder / "feature_repo.yaml").write_text(
        f"project: {PROJECT}\n"
        "definitions: [card_features.py, country_features.py]\n"
        f"offline: {{path: {offline}}}\n"
        f"online: {{url: '{redis_url}', timeout_ms: 200}}\n"
        f"serve: {{max_entities: {MAX_ENTITIES}, max_body_bytes: {MAX_BODY}{extra}}}\n")
    return folder / "feature_repo.yaml"


class Server:
    """``tessera serve`` in a subprocess (own process group), always stopped on exit."""

    def __init__(self, repo: Path, env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = repo.parent / f"serve-{self.port}.log"
        self.cmd = [sys.executable, "-m", "tessera.cli", "serve", "--repo", str(repo),
                    "--port", str(self.port), "--workers", str(workers)]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=REPO_ROOT,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tessera serve exited: {self.log.read_text()[-2000:]}")
            try:
                httpx.get(self.url + "/metrics", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.__exit__()
        raise TimeoutError(f"tessera serve did not answer in 60 s: {self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def post(self, body: Any, **kw: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.url + "/get-online-features", content=content, timeout=10, **kw)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, ``name{labels}`` -> value."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}


def one_line_error(r: httpx.Response, status: int, *fragments: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert "\n" not in r.text
    doc = r.json()
    assert set(doc) == {"error"} and doc["error"], doc
    for fragment in fragments:
        assert fragment in doc["error"], doc["error"]
    return str(doc["error"])
