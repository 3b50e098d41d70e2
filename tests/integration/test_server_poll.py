"""``tessera serve`` polls for its next request for ``serve.poll_us`` after a response, then
sleeps: the app in process, on a real Redis (the package's repo), and the default's rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from features.store import FeatureStore


@pytest.fixture(autouse=True)
def _own_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    # Several apps in one process keep their metrics in memory, as one worker does; with
    # prometheus_client's multiprocess folder (Feast sets one when imported) they would mix.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


async def _health(app: object) -> int:
    """One ``GET /health`` (a Redis PING) through the ASGI app; its status."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "path": "/health", "method": "GET", "headers": []},  # type: ignore[operator]
              receive, send)
    return sent[0]["status"]


def test_the_loop_polls_after_a_response_then_sleeps(store: FeatureStore) -> None:
    """After a response the event loop keeps turning (its vCPU awake for the next request)
    until ``poll_s`` has passed, one chain however many requests end meanwhile; then it stops,
    so an idle server spends no CPU. With ``poll_s`` 0 it never polls."""
    from tessera.server import FeatureServer

    polling, never = FeatureServer(store, poll_s=0.3), FeatureServer(store, poll_s=0.0)
    turns = 0
    turn = polling._poll_turn

    def counted(loop: asyncio.AbstractEventLoop) -> None:
        nonlocal turns
        turns += 1
        turn(loop)

    polling._poll_turn = counted  # type: ignore[method-assign]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        assert await _health(polling) == 200
        assert polling._polling is loop
        assert await _health(polling) == 200  # within the window: the deadline moves on
        await asyncio.sleep(0.01)
        assert polling._polling is loop
        await asyncio.sleep(0.6)  # past the window: the loop sleeps again
        assert polling._polling is None
        assert await _health(never) == 200
        assert never._polling is None

    asyncio.run(run())
    # The loop turned all through the window (a turn is a few µs), not once per request.
    assert turns > 100, turns


def test_a_new_event_loop_gets_its_own_poll(store: FeatureStore) -> None:
    """A loop closed while it was polling leaves nothing behind that stops the next loop's
    poll (a test runner or a restarted server may run the same app on a new loop)."""
    from tessera.server import FeatureServer

    app = FeatureServer(store, poll_s=5.0)

    async def ask() -> asyncio.AbstractEventLoop:
        assert await _health(app) == 200
        return asyncio.get_running_loop()

    first = asyncio.run(ask())  # closed with its poll still due
    assert app._polling is first
    second = asyncio.run(ask())
    assert app._polling is second


def test_poll_default_and_config(store: FeatureStore, repo: Path, tmp_path: Path) -> None:
    """``serve.poll_us`` unset: 1,000 µs, but 0 where the guest kernel polls before halting an
    idle vCPU, on a one-CPU machine and under a CPU quota of less than two CPUs (cgroup v2 or
    v1); a value in the repo wins, and reaches the app."""
    from features.config import load_config
    from features.online import spin
    from tessera.server import create_app

    knob = tmp_path / "guest_halt_poll_ns"
    knob.write_text("0\n")  # what this VM ships
    assert spin.default_serve_poll_us(str(knob), cpus=2) == spin.SERVE_POLL_US == 1000
    assert spin.default_serve_poll_us(str(tmp_path / "absent"), cpus=2) == 1000  # bare metal
    assert spin.default_serve_poll_us(str(knob), cpus=1) == 0
    knob.write_text("200000\n")
    assert spin.default_serve_poll_us(str(knob), cpus=2) == 0
    knob.write_text("0\n")

    def quota(v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
        root = tmp_path / f"cgroup-{v2}-{v1}".replace(" ", "_")
        (root / "cpu").mkdir(parents=True)
        if v2 is not None:
            (root / "cpu.max").write_text(v2 + "\n")
        if v1 is not None:
            (root / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
            (root / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
        return root

    for root, cpus, poll in ((quota("max 100000"), None, 1000),
                             (quota("150000 100000"), 1.5, 0),   # a 1.5-CPU container
                             (quota("400000 100000"), 4.0, 1000),
                             (quota(v1=("-1", "100000")), None, 1000),  # cgroup v1, no quota
                             (quota(v1=("50000", "100000")), 0.5, 0),
                             (quota(), None, 1000)):  # no file to read
        assert spin.cpu_quota(str(root)) == cpus, root
        assert spin.default_serve_poll_us(str(knob), cpus=8, cgroup=str(root)) == poll, root

    assert create_app(store).poll_s == spin.default_serve_poll_us() / 1e6  # this box's
    cfg = load_config(repo)
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"poll_us": 7})})
    set_ = FeatureStore(config=cfg)
    try:
        assert create_app(set_).poll_s == 7e-6
    finally:
        set_.close()
