"""Running the feature server: ``tessera serve`` in one process, or ``--workers N`` sharing the
port, each worker building its app from the repo named by ``TESSERA_SERVE_REPO``.

The app itself, what answers requests, is :class:`tessera.server.FeatureServer`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import OnlineUnavailableError
from tessera.server import FeatureServer, create_app, one_line

if TYPE_CHECKING:
    from features.config import RepoConfig

REPO_ENV = "TESSERA_SERVE_REPO"  # the repo file the workers of `--workers N` load


def app_from_env() -> FeatureServer:
    """The app of one worker of ``--workers N``: the repo named by ``TESSERA_SERVE_REPO``."""
    from features.store import FeatureStore

    app = create_app(FeatureStore(os.environ[REPO_ENV]))
    _prepare_process()
    return app


def _prepare_process() -> None:
    """Process-wide settings of a server process (never of a process that embeds the app).

    The start-up heap (definitions, libraries: ~60k objects) is kept out of every later garbage
    collection: a full collection over it stalls a request by ~45 ms here; after this, <1 ms.
    The ``*_created`` series are dropped from /metrics: they double its size for no use.
    """
    from prometheus_client import disable_created_metrics

    from features.heap import freeze_heap

    disable_created_metrics()
    freeze_heap()


def serve(cfg: RepoConfig, repo_file: str | os.PathLike[str] | None = None, *,
          host: str | None = None, port: int | None = None, workers: int = 1,
          access_log: bool = False, console: Any = None) -> None:
    """Run the feature server until interrupted (``tessera serve``).

    Args:
        cfg: the repo; ``serve:`` gives the defaults of host, port, token and limits.
        repo_file: its feature_repo.yaml, which every worker loads when ``workers > 1``.
        host, port: override ``serve.host`` and ``serve.port``.
        workers: processes sharing the port. One is the default: a single core's event loop
            already answers thousands of requests per second; add workers for more cores.
        access_log: log every request (costs ~10% throughput).
        console: where the start-up lines go (a ``rich`` console); None: nowhere.

    Raises:
        ConfigError: ``serve.token_env`` names an unset variable, or ``workers > 1`` without a
            repo file.
    """
    import uvicorn

    from features.errors import ConfigError
    from features.store import FeatureStore

    host = host or cfg.serve.host
    port = cfg.serve.port if port is None else port
    token = cfg.serve.resolve_token()  # an unset token_env stops here, not at the first request
    poll_us = cfg.serve.resolve_poll_us()  # reads the machine's knobs once (workers: each its own)
    store = FeatureStore(config=cfg)
    common: dict[str, Any] = {
        "host": host, "port": port, "loop": "auto", "http": "auto", "lifespan": "on",
        "access_log": access_log, "server_header": False, "timeout_graceful_shutdown": 5,
    }
    say = console.print if console is not None else (lambda *_a, **_k: None)
    views, services = len(store.definitions.views), len(store.definitions.services)
    say(f"tessera serve: {views} feature views, {services} feature services of "
        f"{cfg.project!r} on http://{host}:{port} ({workers} worker{'s' * (workers > 1)}, "
        f"token {'required' if token else 'not required'}, polls {poll_us} µs "
        f"for the next request)")
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        say(f"[bold yellow]warning:[/] serving on {host} without a token: anyone who can reach "
            f"it can read features (set serve.token_env)")
    try:
        store.online.ping()
    except OnlineUnavailableError as e:
        say(f"[bold yellow]warning:[/] {one_line(str(e))}; serving anyway (GET /health "
            f"answers 503 until it is reachable)")
    if workers <= 1:
        # One process keeps its metrics in memory: an inherited PROMETHEUS_MULTIPROC_DIR (Feast
        # sets one when imported) would mix other processes' counts into ours.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        app = create_app(store, token=token, poll_us=poll_us)  # the poll as printed
        _prepare_process()
        uvicorn.run(app, **common)
        return
    if repo_file is None:
        raise ConfigError("--workers N needs the repo file (--repo): every worker loads it")
    store.close()
    import tempfile

    saved = {k: os.environ.get(k) for k in (REPO_ENV, "PROMETHEUS_MULTIPROC_DIR")}
    with tempfile.TemporaryDirectory(prefix="tessera-serve-metrics-") as metrics_dir:
        os.environ[REPO_ENV] = str(Path(repo_file).resolve())
        # Always our own, fresh folder: an inherited one (Feast sets it when imported) would
        # add other processes' counts to ours.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            uvicorn.run("tessera.server_run:app_from_env", factory=True, workers=workers, **common)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
