"""``tessera serve``: the HTTP feature server, with Feast's request and response JSON.

    POST /get-online-features  {"features": [...]} or {"feature_service": "..."},
                               "entities": {"user_id": [1, 2]}, "full_feature_names": false
    GET  /health               200 {"status": "ok"}, or 503 with the reason
    GET  /metrics              Prometheus text exposition

A plain ASGI callable on uvicorn (httptools parser, uvloop): no framework between the socket and
:meth:`features.store.FeatureStore.get_online_features`, which this module calls as is, so an HTTP
answer holds exactly the values and statuses of the Python call. Every malformed request gets a
4xx with a one-line ``{"error": "..."}``; Redis out of reach gets a 503 with the reason. See
docs/serving.md for the measurements behind the choices below.

The Redis read runs on the event loop: it is one ``MGET`` of a few hundred microseconds, and
handing it to a thread costs more than it saves (measured). A lone request blocks on it (polling
for the reply, the fastest alone); requests that queue await it instead, so the loop serves the
others meanwhile (``FeatureStore.get_online_features_async``, see ``FeatureServer._features``).
What a thread would protect against is a Redis that hangs, which would stall the loop for
``online.timeout_ms`` per request; that is what the circuit breaker is for: after one failure,
requests get the 503 at once while a background thread pings Redis, and the first successful
ping closes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from features.config import ServeConfig
from features.errors import OnlineRequestError, OnlineUnavailableError
from features.names import cut
from tessera.feast_json import RequestError, dumps, encode_response, parse_request
from tessera.server_metrics import ENDPOINTS, OTHER, Metrics

if TYPE_CHECKING:
    from features.store import FeatureStore

log = logging.getLogger("uvicorn.error")  # configured by uvicorn: lines beside its own

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

FEATURES_PATH = "/get-online-features"
PROBE_SECONDS = 0.2  # how often the breaker pings Redis while it is open
# A request whose body has not all arrived this long after it started gets a 408: a client that
# declared more bytes than it sent, or sends them a few a minute, holds no connection for ever.
# The default is the config's (serve.body_timeout_ms), written once there.
BODY_TIMEOUT_S = ServeConfig.model_fields["body_timeout_ms"].default / 1000
_MESSAGE_CHARS = 1000  # an error message longer than this is cut (the sources already cut names)
# A request that starts within this long of the previous one's end was waiting on the loop: the
# sign of a queue, and the switch to awaited reads. A lone client's next request takes longer
# to arrive (its round trip over the loopback alone is ~50 µs here).
QUEUED_S = 20e-6
_JSON = [(b"content-type", b"application/json")]
_CREDENTIALS = re.compile(r"(?<=//)[^/@\s]*@")  # user:password@ in a URL


def one_line(message: str) -> str:
    return cut(_CREDENTIALS.sub("***@", " ".join(message.split())), _MESSAGE_CHARS)


# --------------------------------------------------------------------------------------------
# The ASGI application
# --------------------------------------------------------------------------------------------

class FeatureServer:
    """The ASGI app of ``tessera serve`` (build it with :func:`create_app`).

    Args:
        store: the repo to serve; its Redis connection is opened on first use.
        token: the bearer token feature requests must carry (None: none needed). ``/health``
            and ``/metrics`` never need it (probes and scrapers rarely carry one).
        max_entities: entities per request, at most.
        max_body_bytes: request body size, at most.
        offload: run each Redis read in a thread instead of on the event loop (measured slower;
            kept for the benchmark that shows it).
        queued_s: a feature request that starts within this long of the previous request's
            end, or while another awaits Redis, awaits its own read instead of blocking on it.
        poll_s: after a response, the event loop polls for the next request this long before it
            sleeps (0: it sleeps at once; ``serve.poll_us``).
        body_timeout_s: a request whose body has not all arrived this long after it started
            gets a 408 and its connection is closed.
    """

    def __init__(self, store: FeatureStore, *, token: str | None = None,
                 max_entities: int = 1000, max_body_bytes: int = 1 << 20,
                 offload: bool = False, queued_s: float = QUEUED_S,
                 poll_s: float = 0.0, body_timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.store = store
        self.metrics = Metrics()
        self.max_entities = max_entities
        self.max_body_bytes = max_body_bytes
        self.offload = offload
        self.queued_s = queued_s
        self._token = None if token is None else token.encode()
        self.down: str | None = None  # the breaker: Redis's last failure while it is open
        self._busy = 0  # feature requests in progress on the loop
        self._done = 0.0  # perf_counter when the last one finished
        self._probe: asyncio.Task[None] | None = None
        self.poll_s = poll_s
        self._poll_until = 0.0
        self._polling: asyncio.AbstractEventLoop | None = None  # the loop kept polling, if any
        self.body_timeout_s = body_timeout_s
        self._reading: dict[asyncio.Task[Any], float] = {}  # requests reading a body: since
        self._late: set[asyncio.Task[Any]] = set()  # those the watchdog cancelled
        self._watchdog: asyncio.Task[None] | None = None
        self.warm()

    def warm(self) -> None:
        """Plan every feature service once, so its first request is not the slow one; load
        the serving log's writer libraries now rather than during the first logged request."""
        if self.store.serving_log is not None:
            self.store.serving_log.prepare()
        for name in self.store.definitions.services:
            for full in (False, True):
                # Two views sharing a feature name only plan with full names: skip the other.
                with contextlib.suppress(OnlineRequestError):
                    self.store.plan(feature_service=name, full_feature_names=full)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in (self._probe, self._watchdog):
                    if task is not None:
                        task.cancel()
                self.store.close()  # also writes the buffered serving log
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        began = time.perf_counter()
        path, method = scope["path"], scope["method"]
        endpoint = path if path in ENDPOINTS else OTHER
        headers = _JSON
        entities = 0
        error = None
        try:
            if path == FEATURES_PATH:
                self._allow(method, "POST")
                status, body, entities = 200, *await self._features(scope, receive, began)
            elif path == "/health":
                self._allow(method, "GET")
                status, body = await self._health()
            elif path == "/metrics":
                self._allow(method, "GET")
                if self.store.serving_log is not None:
                    self.metrics.serving_log(self.store.serving_log.stats())
                body, content_type = self.metrics.render()
                status, headers = 200, [(b"content-type", content_type.encode())]
            else:
                raise RequestError("not_found", f"no such path {path!r}; the server answers "
                                   f"POST {FEATURES_PATH}, GET /health and GET /metrics")
        except RequestError as e:
            status, error = e.status, e.kind
            body = dumps({"error": one_line(str(e))})
            if e.kind == "unauthorized":
                headers = [*_JSON, (b"www-authenticate", b"Bearer")]
            elif e.kind == "unavailable":
                headers = [*_JSON, (b"retry-after", b"1")]
            elif e.kind == "method_not_allowed":
                headers = [*_JSON, (b"allow",
                                    b"POST" if path == FEATURES_PATH else b"GET, HEAD")]
            elif e.kind == "body_timeout":  # the rest of the body may still come: drop it
                headers = [*_JSON, (b"connection", b"close")]
        except Exception as e:  # a bug: still one line and JSON, and the traceback in the log
            log.exception("%s %s failed", method, path)
            status, error = 500, "internal"
            body = dumps({"error": one_line(f"internal error: {type(e).__name__}: {e}")})
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        self._done = done = time.perf_counter()
        self.metrics.observe(endpoint, status, done - began, error, entities)
        if self.poll_s:
            self._poll_after(done)
        if entities and self.store.serving_log is not None:
            self.metrics.serving_log(self.store.serving_log.stats())

    def _poll_after(self, now: float) -> None:
        """Keep the event loop polling for the next request until ``poll_s`` after ``now``.

        A callback ready to run makes the loop's next wait for I/O a poll (timeout 0); one
        that queues itself again each turn keeps the loop polling, and the vCPU awake, until
        the deadline, then the loop sleeps as usual. One chain per loop, whatever the number of
        requests; a request ending meanwhile only moves the deadline.
        """
        self._poll_until = now + self.poll_s
        loop = asyncio.get_running_loop()
        if self._polling is not loop:  # none running (or one left on a closed loop)
            self._polling = loop
            loop.call_soon(self._poll_turn, loop)

    def _poll_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._polling:  # superseded by a chain on another loop
            return
        if time.perf_counter() < self._poll_until:
            loop.call_soon(self._poll_turn, loop)
        else:
            self._polling = None

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed and not (method == "HEAD" and allowed == "GET"):  # HEAD: no body
            raise RequestError("method_not_allowed", f"method {method} is not allowed here; "
                               f"use {allowed}{' (or HEAD)' if allowed == 'GET' else ''}")

    async def _features(self, scope: Scope, receive: Receive, began: float
                        ) -> tuple[bytes, int]:
        length = None
        authorization = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                authorization = value
        if self._token is not None:
            if authorization is None:
                raise RequestError("unauthorized", "this server needs a bearer token: send "
                                   "'Authorization: Bearer <token>'")
            scheme, _, credentials = authorization.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(),
                                                                     self._token):
                raise RequestError("unauthorized", "wrong bearer token")
        raw = await self._body(receive, length, began)
        features, service, entities, full = parse_request(raw, self.max_entities)
        store = self.store
        try:
            plan = store.plan(features, service, full)
        except OnlineRequestError as e:
            message = str(e).replace("full_feature_names=True", '"full_feature_names": true')
            kind = "bad_request" if "requested twice" in message else "unknown_feature"
            raise RequestError(kind, message) from None
        if self.down is not None:  # a malformed request is still a 400; one needing no key is
            try:                   # answered (every key null, or no entity): no Redis in it
                _, columns = plan.entity_columns(entities)
            except OnlineRequestError as e:
                raise RequestError("bad_entities", str(e)) from None
            if any(v is not None for key in plan.join_keys for v in columns[key]):
                raise RequestError("unavailable", self.down)
        self._busy += 1
        try:
            if self.offload:
                resp = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: store.get_online_features(
                        features, entities, feature_service=service, full_feature_names=full))
            elif self._busy > 1 or began - self._done < self.queued_s:
                # Requests are queueing (another one is awaiting Redis, or this one started
                # right as the last finished): await the round trip, so the loop serves the
                # others meanwhile and their reads follow on the same connection.
                self.metrics.awaited_read.inc()
                resp = await store.get_online_features_async(
                    features, entities, feature_service=service, full_feature_names=full)
            else:  # alone: block, polling for the reply (online.spin_us), the fastest then
                self.metrics.blocking_read.inc()
                resp = store.get_online_features(features, entities, feature_service=service,
                                                 full_feature_names=full)
        except OnlineRequestError as e:
            raise RequestError("bad_entities", str(e)) from None
        except UnicodeEncodeError:  # "\ud800" is valid JSON but cannot be a Redis key
            raise RequestError("bad_entities", "an entity value is not valid Unicode (it holds "
                               "a lone surrogate such as \\ud800)") from None
        except OnlineUnavailableError as e:
            self._trip(str(e))
            raise RequestError("unavailable", str(e)) from None
        finally:
            self._busy -= 1
        n = len(next(iter(resp.entities.values()), ()))
        return encode_response(resp), n

    async def _body(self, receive: Receive, length: bytes | None, began: float) -> bytes:
        """The request's body, whole; a 413 past ``max_body_bytes``, a 408 when it has not all
        arrived ``body_timeout_s`` after ``began`` (the watchdog cancels the wait)."""
        limit = self.max_body_bytes
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise RequestError("bad_request", "Content-Length is not a number") from None
            if declared > limit:
                raise RequestError("body_too_large", f"the body is {declared} bytes; the limit "
                                   f"is {limit} (serve.max_body_bytes)")
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = began
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_bodies())
        try:
            message = await receive()
            body = message.get("body", b"")
            if not message.get("more_body", False) and len(body) <= limit:
                return body  # the usual case: the whole body in one message
            chunks, size = [body], len(body)
            while message.get("more_body", False) and size <= limit:
                message = await receive()
                chunk = message.get("body", b"")
                chunks.append(chunk)
                size += len(chunk)
        except asyncio.CancelledError:
            if task not in self._late:  # cancelled by someone else (a shutdown): let it go
                raise
            task.uncancel()
            raise RequestError("body_timeout", f"the body had not all arrived after "
                               f"{self.body_timeout_s:g} s (serve.body_timeout_ms; a "
                               f"Content-Length larger than the body sent?)") from None
        finally:
            del self._reading[task]
            self._late.discard(task)
        if size > limit:  # chunked, or a Content-Length that lied
            raise RequestError("body_too_large", f"the body is over {limit} bytes, the limit "
                               f"(serve.max_body_bytes)")
        return b"".join(chunks)

    async def _watch_bodies(self) -> None:
        """Cancel the body reads older than ``body_timeout_s``; runs while there are some
        (a dict entry per read costs the request nothing like a timer of its own would)."""
        while self._reading:
            await asyncio.sleep(self.body_timeout_s / 4)
            now = time.perf_counter()
            for task, since in list(self._reading.items()):
                if now - since > self.body_timeout_s and task not in self._late:
                    self._late.add(task)
                    task.cancel()

    async def _health(self) -> tuple[int, bytes]:
        reason = self.down
        if reason is None:
            try:  # in a thread: a Redis that hangs must not stall the loop
                await asyncio.get_running_loop().run_in_executor(None, self.store.online.ping)
            except OnlineUnavailableError as e:
                reason = str(e)
                self._trip(reason)
        if reason is not None:
            return 503, dumps({"status": "unavailable", "error": one_line(reason)})
        return 200, b'{"status":"ok"}'

    def _trip(self, reason: str) -> None:
        """Open the breaker: answer 503 at once until a background ping succeeds."""
        if self.down is None:
            log.warning("%s; answering 503 until it is reachable again",
                        one_line(reason).rstrip("."))
        self.down = reason
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        loop = asyncio.get_running_loop()
        while self.down is not None:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                await loop.run_in_executor(None, self.store.online.ping)
            except OnlineUnavailableError as e:
                self.down = str(e)
            except Exception as e:  # not an outage: let requests try (and say what failed)
                log.warning("online store probe failed: %s: %s", type(e).__name__, e)
                self.down = None
            else:
                self.down = None
                log.info("online store reachable again")


def create_app(store: FeatureStore, *, token: str | None = None, max_entities: int | None = None,
               max_body_bytes: int | None = None, offload: bool = False,
               poll_us: int | None = None) -> FeatureServer:
    """The ASGI app serving ``store``; limits, token and poll default to its ``serve:`` config.

    Example:
        >>> from features.store import FeatureStore                      # doctest: +SKIP
        >>> app = create_app(FeatureStore("."))                          # doctest: +SKIP
        >>> uvicorn.run(app, port=6566, loop="uvloop", http="httptools")  # doctest: +SKIP
    """
    cfg = store.config.serve
    return FeatureServer(store, token=cfg.resolve_token() if token is None else token,
                         max_entities=max_entities or cfg.max_entities,
                         max_body_bytes=max_body_bytes or cfg.max_body_bytes, offload=offload,
                         poll_s=(cfg.resolve_poll_us() if poll_us is None else poll_us) / 1e6,
                         body_timeout_s=cfg.body_timeout_ms / 1000)
